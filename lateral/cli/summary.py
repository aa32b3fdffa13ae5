"""``lateral summary``: the per-layer table of a config's model (standard library only at import)."""

from __future__ import annotations

import argparse

from lateral.cli.args import add_cfg_options, positive_int
from lateral.config import ConfigError


def run_summary(args: argparse.Namespace) -> int:
    from lateral.engine.loading import load_run_config
    from lateral.engine.summary import default_input_shape, parse_shape, screen_depth, summarize
    from lateral.registry import build_model

    cfg = load_run_config(args.config, args.cfg_options)
    if "model" not in cfg:
        raise ConfigError(f"{args.config} defines no 'model'")
    model = build_model(cfg["model"])
    shape = parse_shape(args.input) if args.input else default_input_shape(cfg)
    depth, deepest = (args.depth, None) if args.depth else screen_depth(model)
    print(summarize(model, shape, max_depth=depth).table())
    if deepest is not None and depth < deepest:
        print(
            f"rows aggregated at depth {depth} of {deepest} to fit a screen; --depth {depth + 1} or deeper shows "
            f"more (--depth {deepest}: every layer)"
        )
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``summary``."""
    parser = subparsers.add_parser("summary", help="per-layer table and totals (params, MACs) of a config's model")
    parser.add_argument("config", help="config file (.py), or a checkpoint that carries its config")
    parser.add_argument("--input", help="input shape like 1x3x32x224x224 (default: the config's input_shape)")
    parser.add_argument(
        "--depth",
        type=positive_int,
        default=None,
        help="aggregate rows at this module depth (1 = top level; default: the deepest whose table fits a screen)",
    )
    add_cfg_options(parser)
    parser.set_defaults(func=run_summary)
