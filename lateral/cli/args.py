"""Argument types and options shared by the ``lateral`` commands (standard library only)."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "add_cfg_options", "add_device"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts, sizes, thread numbers), with a message naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def add_cfg_options(parser: argparse.ArgumentParser) -> None:
    """``--cfg-options KEY=VALUE ...``: overrides of config entries (``args.cfg_options``, a list)."""
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config entries, e.g. train_dataloader.batch_size=4",
    )


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the command runs (``args.device``; None: the GPU if there is one, else the CPU)."""
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU if there is one, else the CPU)")
