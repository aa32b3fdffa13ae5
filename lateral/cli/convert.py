"""``lateral convert``: PyTorchVideo / PySlowFast / FPN-seed checkpoints to lateral and back (standard library
only at import)."""

from __future__ import annotations

import argparse

from lateral.cli.args import positive_int

# the choices of --depth and --preset: lateral.convert's STAGE_BLOCKS and SAMPLING_PRESETS, written out so that
# `lateral --help` does not import torch (tests/cli/test_parser.py checks that they agree)
DEPTHS = [50, 101, 152]
PRESETS = ["16x8", "4x16", "8x8"]


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``lateral convert``."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a PyTorchVideo / PySlowFast SlowFast checkpoint, or an FPN-seed FPN, into lateral (and back)",
        description=(
            "Convert SlowFast weights between PyTorchVideo, PySlowFast (.pyth, Caffe2 .pkl) and lateral. The "
            "lateral file carries the model config, input normalisation and frame sampling of the source, so "
            "'lateral predict OUT video.mp4' needs nothing else. See docs/convert.md."
        ),
    )
    parser.add_argument("src", metavar="SRC", help="checkpoint to convert (Caffe2 pickles must end in .pkl)")
    parser.add_argument(
        "--from",
        dest="source_format",
        required=True,
        choices=["pytorchvideo", "pyslowfast", "fpn-seed", "lateral"],
        help="layout of SRC ('fpn-seed': the FPN seed's own FPN50/101/152 module names)",
    )
    parser.add_argument(
        "--to",
        dest="target_format",
        default="lateral",
        choices=["lateral", "pytorchvideo", "pyslowfast", "fpn-seed"],
        help="layout to write (default: lateral)",
    )
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--num-classes", type=positive_int, help="classes the checkpoint must have (checked)")
    parser.add_argument("--depth", type=int, choices=DEPTHS, help="ResNet depth SRC must have (checked)")
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        help="model-zoo sampling TxS: sets alpha, clip length and frame interval (4x16: 8/32/2, 8x8: 4/32/2, "
        "16x8: 4/64/2)",
    )
    parser.add_argument(
        "--alpha", type=positive_int, help="speed ratio fast/slow (not stored in the weights; default 4)"
    )
    parser.add_argument("--clip-len", type=positive_int, help="frames per clip fed to the fast pathway (default 32)")
    parser.add_argument("--frame-interval", type=positive_int, help="source frames between clip frames (default 2)")
    parser.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """``lateral convert``: convert ``args.src`` and write ``args.out`` atomically."""
    from lateral.checkpoint import save_checkpoint
    from lateral.convert import SAMPLING_PRESETS, SlowFastArch, convert_checkpoint, convert_fpn_checkpoint

    if "fpn-seed" in (args.source_format, args.target_format):
        converted = convert_fpn_checkpoint(args.src, args.source_format, args.target_format, depth=args.depth)
        save_checkpoint(converted, args.out)
        state = converted.get("state_dict", converted)
        print(f"wrote {args.out}: {len(state)} tensors in {args.target_format} layout")
        return 0

    alpha, clip_len, frame_interval = args.alpha, args.clip_len, args.frame_interval
    if args.preset is not None:
        preset_alpha, preset_clip_len, preset_interval = SAMPLING_PRESETS[args.preset]
        alpha = preset_alpha if alpha is None else alpha
        clip_len = preset_clip_len if clip_len is None else clip_len
        frame_interval = preset_interval if frame_interval is None else frame_interval
    converted = convert_checkpoint(
        args.src,
        args.source_format,
        args.target_format,
        depth=args.depth,
        num_classes=args.num_classes,
        speed_ratio=alpha,
        clip_len=clip_len,
        frame_interval=frame_interval,
    )
    save_checkpoint(converted, args.out)
    state = converted["state_dict"] if "state_dict" in converted else converted["model_state"]
    line = f"wrote {args.out}: {len(state)} tensors in {args.target_format} layout"
    if "meta" in converted:
        arch = SlowFastArch(**converted["meta"]["arch"])
        sampling = converted["meta"]["sampling"]
        line += f", {arch.describe()}, clip {sampling['clip_len']}x{sampling['frame_interval']}"
    print(line)
    return 0
