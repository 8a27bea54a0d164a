"""`pidiff launch`: run a `pidiff` command as N data-parallel ranks on this machine.

    pidiff launch --processes 2 -- train --encoded enc/ --split v1 --sd sd15/ --out runs/v1
    pidiff launch --processes 4 -- encode --shards 'shards/v1-{000000..000099}.tar' ...

This process becomes `accelerate launch --multi_gpu --num_processes N -m pidiff.cli COMMAND ...`
(one rank per GPU; CPU ranks over gloo where torch sees no GPU) by exec, so it keeps its pid and
the launcher is exactly the process its parent started. What it adds to a bare `accelerate launch`:

- The launcher ends with its parent. Under pidiff-data (PIDIFF_PARENT_PID), `pidiff.cli` has asked
  Linux for SIGTERM when the parent dies, even by SIGKILL; that request survives the exec, so the
  launcher gets the SIGTERM and stops its ranks (torch's elastic agent sends them SIGTERM, then
  SIGKILL after its grace period). The ranks are told the launcher's pid as their PIDIFF_PARENT_PID
  in turn, so a launcher killed outright (SIGKILL: no chance to stop them) still takes them with it.
- A free rendezvous port by default, so two runs on one machine do not collide on 29500.
- The accelerate settings pidiff needs whatever `accelerate config` holds: one machine, no mixed
  precision (pidiff chooses its own), no dynamo (pidiff's --compile chooses).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_argv(processes: int, command: list[str], port: int) -> list[str]:
    """The accelerate command line that starts `pidiff COMMAND ...` on `processes` ranks."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", "pidiff.cli", *command]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pidiff launch",
        description="Run a pidiff command (train, encode) as N data-parallel ranks through accelerate on this "
                    "machine; the ranks end when this process or its parent (pidiff-data) does.",
        epilog="example: pidiff launch --processes 2 -- encode --shards 'shards/v1-{000000..000009}.tar' "
               "--e4e e4e_ffhq_encode.pt --sd sd15/ --out encoded/")
    parser.add_argument("--processes", type=int, required=True, help="ranks (one per GPU)")
    parser.add_argument("--port", type=int, default=0, help="rendezvous port (default: a free one)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the pidiff command and its options, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.processes < 1:
        print(f"pidiff launch: --processes must be at least 1, not {args.processes}", file=sys.stderr)
        return 2
    if not command:
        print("pidiff launch: no command to launch (e.g. -- train ...)", file=sys.stderr)
        return 2
    # This process's pid survives the exec: the ranks end with the launcher (pidiff.cli reads it).
    os.environ["PIDIFF_PARENT_PID"] = str(os.getpid())
    argv = (launcher_argv(args.processes, command, args.port or free_port()) if args.processes > 1
            else [sys.executable, "-m", "pidiff.cli", *command])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
    return 0  # not reached
