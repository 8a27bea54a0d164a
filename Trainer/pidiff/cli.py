"""The `pidiff` command: `pidiff <command> [options]`, one module per command.

Each command's module is imported only when that command runs, so `pidiff encode` never pays for
the trainer's imports and a missing optional module or package gives one clear line, not a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str  # exposes main(argv: list[str]) -> int | None
    summary: str


COMMANDS = {
    "encode": Command("pidiff.encode", "encode WebDataset shards: e4e w+ codes and SD VAE latent mean/std, one safetensors per shard"),
    "random-model": Command("pidiff.random_model", "write random-weight SD1.5 (diffusers layout) and e4e (official layout) models"),
    "train": Command("pidiff.train", "fine-tune the PIDiff mapper and style cross-attention on encoded shards"),
    "sample": Command("pidiff.sample", "generate images of an identity from trained PIDiff weights"),
    "wplus": Command("pidiff.wplus", "the e4e w+ code of a face, from any photo (via pidiff-data face) or a prepared e4e input"),
    "launch": Command("pidiff.launch", "run train or encode as N data-parallel ranks (accelerate), ending with its parent"),
    "eval": Command("pidiff.evaluate", "score generated images: ID (ArcFace), LPIPS (VGG), CLIP-T, per identity and overall"),
    "ablate": Command("pidiff.ablate", "ablation grid: train, sample and evaluate each setting (steps, images, lambda, augment, drops)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pidiff",
        description="PIDiff: identity-personalised Stable Diffusion 1.5 trained on pidiff-data shards.",
        epilog="run 'pidiff <command> --help' for a command's options",
    )
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, command in COMMANDS.items():
        commands.add_parser(name, help=command.summary, add_help=False)
    return parser


def run_command(name: str, module_name: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            print(f"pidiff {name}: this install has no {module_name} module, so '{name}' is unavailable", file=sys.stderr)
        else:
            print(f"pidiff {name}: needs the Python package '{error.name}', which is not installed", file=sys.stderr)
        return 2
    result = module.main(argv)
    return int(result or 0)


def stop_with_parent() -> None:
    """Under pidiff-data (PIDIFF_PARENT_PID), end with it: Linux sends SIGTERM when the direct
    parent dies, even by SIGKILL, so a killed pipeline does not leave a GPU job running that a rerun
    would duplicate. The direct parent may be a wrapper script (`--python wrapper.sh`, `conda run`)
    between the two; then it is the wrapper's death that counts. A pidiff-data already gone ends
    this process at once."""
    parent = os.environ.pop("PIDIFF_PARENT_PID", "")  # for this process only, not its children
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    try:
        os.kill(int(parent), 0)  # does pidiff-data still exist? (signal 0 only checks)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGTERM)
    except PermissionError:
        pass  # it exists, as another user: not ours to judge


def main(argv: list[str] | None = None) -> int:
    stop_with_parent()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv[:1])  # prints help, or the list of valid commands, and exits
        return 2
    name = argv[0]
    return run_command(name, COMMANDS[name].module, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
