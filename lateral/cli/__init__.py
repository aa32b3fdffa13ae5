"""The ``lateral`` command: a thin argparse layer over the library.

argparse lives only in this package; nothing else in ``lateral`` imports it. One module per command group
(``recognition``: train / test / predict / demo, ``detect``, ``data``, ``convert``, ``export``: export / bench,
``summary``) defines its sub-parsers and the functions that run them, calling the library with plain arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

from lateral.cli import convert, data, detect, export, recognition, summary
from lateral.errors import LateralError

# errors whose message says all a user needs (what failed, where, what to do): printed as one line. The OS errors
# are about the user's paths (a missing file, --out on a folder); anything else is a bug in lateral and keeps its
# traceback.
USER_ERRORS = (LateralError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)

# one module per command group, each with add_cli(subparsers); its sub-parsers set ``func`` to the function that
# runs the command. These modules import only the standard library, so that ``lateral --help`` is quick.
COMMAND_MODULES = (summary, recognition, data, detect, convert, export)


# commands that run a trained model over many inputs: they keep freed memory in the heap (lateral.heap), which makes
# large-map models faster; `bench` does not, so that its eager reference runs with the stock allocator
INFERENCE_COMMANDS = ("predict", "test")


def says_errors() -> bool:
    """Whether this process prints a user error. Under torchrun, an error raised before the ranks joined one process
    group comes from the arguments and files that every rank of a machine reads alike, so only local rank 0 says it
    (once per machine, not once per rank); after joining, each rank says its own."""
    from lateral.engine import distributed as dist_utils

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist_utils.joined_process_group():
        return True
    return os.environ.get("LOCAL_RANK", "0") == "0"


def rank_tag() -> str:
    """' [rank N]' in a process of a process group, so that ranks' messages can be told apart; '' otherwise."""
    from lateral.engine import distributed as dist_utils

    return f" [rank {os.environ.get('RANK', '0')}]" if dist_utils.joined_process_group() else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lateral",
        description="SlowFast video recognition and FPN detection (mmaction2 / torchvision compatible).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    command = " ".join(
        filter(None, [args.command, getattr(args, "data_command", None), getattr(args, "detect_command", None)])
    )

    if args.command in INFERENCE_COMMANDS or getattr(args, "detect_command", None) in INFERENCE_COMMANDS:
        from lateral.heap import keep_freed_memory

        keep_freed_memory()
    try:
        code = int(args.func(args) or 0)
    except USER_ERRORS as err:
        if says_errors():
            print(f"lateral {command}{rank_tag()}: error: {err}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        hint = ""
        if command.endswith("train"):
            hint = (
                " The checkpoints written so far are kept: the same command with --resume auto continues from the last."
            )
        print(f"\nlateral {command}: interrupted.{hint}", file=sys.stderr)
        code = 130  # the shell's code for a command stopped by Ctrl-C
    from lateral.engine import distributed as dist_utils

    if dist_utils.joined_process_group():  # a torchrun worker: skip the teardown where gloo's threads can abort
        dist_utils.exit_worker(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
