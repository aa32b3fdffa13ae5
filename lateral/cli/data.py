"""``lateral data check``: every unreadable or too-short video of a dataset (standard library only at import)."""

from __future__ import annotations

import argparse
import sys

from lateral.cli.args import positive_int


def run_check(args: argparse.Namespace) -> int:
    from lateral.data.check import check_entries, collect_entries

    entries = collect_entries(args.source, args.data_prefix)
    if not entries:
        print(f"no videos found in '{args.source}'", file=sys.stderr)
        return 1
    results = check_entries(
        entries, args.min_frames, args.full, args.filename_tmpl, args.start_index, num_classes=args.num_classes
    )
    bad = [r for r in results if not r.ok]
    short = sum(r.too_short for r in bad)
    labels = sum(r.bad_label for r in bad)
    frames = [r.num_frames for r in results if r.ok]
    print(
        f"checked {len(results)}: {len(results) - len(bad)} ok, {len(bad)} bad "
        f"({len(bad) - short - labels} unreadable, {short} too short"
        + (f", {labels} with a bad label)" if labels else ")")
        + (f"; frames per video {min(frames)}-{max(frames)}" if frames else "")
    )
    return 1 if bad else 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lateral data check``."""
    data = subparsers.add_parser("data", help="inspect video datasets", description="Inspect video datasets.")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    check = commands.add_parser(
        "check",
        help="report every unreadable or too-short video",
        description="Open every video of a folder, list file or Kinetics CSV; report each unreadable or too-short "
        "one with the reason, then a summary. Exit code 1 if any is bad.",
    )
    check.add_argument("source", metavar="LIST_OR_DIR", help="folder of videos, list file or Kinetics CSV")
    check.add_argument("--data-prefix", default=None, help="folder the list's paths are relative to")
    check.add_argument(
        "--min-frames", type=positive_int, default=1, help="videos with fewer frames are reported (default 1)"
    )
    check.add_argument("--num-classes", type=positive_int, help="labels must lie in 0..N-1 (a list file's last field)")
    check.add_argument("--full", action="store_true", help="decode every frame, not only first/middle/last")
    check.add_argument("--filename-tmpl", default="img_{:05}.jpg", help="rawframe image names (default img_{:05}.jpg)")
    check.add_argument("--start-index", type=int, default=1, help="index of the first rawframe image (default 1)")
    check.set_defaults(func=run_check)
