"""User data in human output: identity names, prompts, method names and paths come from files and
command lines, and may hold control characters (a newline that forges a second line, an ESC that
starts a terminal escape sequence). `shown` escapes them for terminal lines, logs and the Markdown
reports; JSON and CSV outputs keep the exact text.
"""

from __future__ import annotations

import re

# C0 controls (including tab, newline, carriage return, ESC), DEL and the C1 controls.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")
NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(value: object) -> str:
    """`str(value)` with each control character written as an escape (\\n, \\r, \\t, else \\xNN),
    so it stays on its line and cannot drive the terminal. Everything else is kept as it is
    (backslashes too: a path stays readable)."""
    return CONTROL_CHARACTERS.sub(lambda match: NAMED_ESCAPES.get(match.group(), f"\\x{ord(match.group()):02x}"),
                                  str(value))
