"""``lateral export`` (ONNX / TorchScript) and ``lateral bench`` (every inference path timed in one run); standard
library only at import."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from lateral.cli.args import add_cfg_options, positive_int
from lateral.config import ConfigError

if TYPE_CHECKING:
    from lateral.inference.timing import BenchmarkResult

# lateral.inference's EXPORT_FORMATS and VARIANTS, written out so that `lateral --help` does not import torch
# (tests/cli/test_parser.py checks that they agree)
EXPORT_FORMATS = ("onnx", "torchscript")
VARIANTS = (
    "eager-fp32",
    "fused-fp32",
    "fused-bf16",
    "compiled-fp32",
    "compiled-bf16",
    "onnxruntime",
    "openvino-fp32",
    "openvino-bf16",
)


def _weights_of(args: argparse.Namespace) -> str | None:
    """The checkpoint to load: the one given, else the config argument itself when it is a checkpoint (which
    carries its config); None (random weights) when neither holds weights."""
    if args.checkpoint is None and not args.config.endswith(".py"):
        return args.config
    return args.checkpoint


def run_export(args: argparse.Namespace) -> int:
    """``lateral export``: write ONNX / TorchScript and, with ``--check``, compare it with PyTorch."""
    import torch

    from lateral.engine.exporting import CHECK_ATOL, CHECK_RTOL, build_from_files, example_input, exportable_module
    from lateral.inference.exporters import MissingDependencyError, check_export, export_model

    args.checkpoint = _weights_of(args)
    if args.checkpoint is None or args.checkpoint.lower() == "none":
        warnings.warn("no checkpoint given: exporting randomly initialised weights", stacklevel=1)
    model, cfg = build_from_files(args.config, args.checkpoint, args.cfg_options)
    module, note = exportable_module(model)
    if note:
        print(note)
    x = example_input(args.input, module, cfg)
    try:
        path = export_model(module, args.out, x, args.format)
        print(f"wrote {path} ({args.format}, input {'x'.join(map(str, x.shape))}, dynamic batch)")
        if not args.check:
            return 0
        # a second batch size exercises the dynamic batch dimension
        bigger = torch.randn((x.shape[0] + 1, *x.shape[1:]), generator=torch.Generator().manual_seed(1))
        result = check_export(module, path, args.format, [x, bigger], threads=args.threads)
    except MissingDependencyError as err:
        print(f"lateral export: error: {err}", file=sys.stderr)
        return 1
    bound = CHECK_ATOL + CHECK_RTOL * result["max_abs_reference"]
    ok = result["max_abs_diff"] <= bound
    print(
        f"check ({args.format} vs PyTorch eager, batch {x.shape[0]} and {bigger.shape[0]}): "
        f"max abs diff {result['max_abs_diff']:.3e}, max rel diff {result['max_rel_diff']:.3e} "
        f"-> {'OK' if ok else 'MISMATCH'} (bound {bound:.1e})"
    )
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------------------- bench


def bench_variants(precisions: list[str], compile: bool, onnx: bool, openvino: bool) -> list[str]:
    """Variant names for the bench options: eager fp32, fused per precision, compiled, onnxruntime, OpenVINO."""
    names = ["eager-fp32"] + [f"fused-{p}" for p in precisions]
    if compile:
        names += [f"compiled-{p}" for p in precisions]
    if onnx:
        names.append("onnxruntime")
    if openvino:
        names += [f"openvino-{p}" for p in precisions]
    return names


# how each timed variant is asked for: flags of ``lateral predict`` (recognizers) and arguments of
# ``lateral.optimize`` (any backbone); onnxruntime runs an exported file
_PREDICT_FLAGS = {
    "eager-fp32": "--eager",
    "fused-fp32": "--precision fp32",
    "fused-bf16": "--precision bf16",
    "compiled-fp32": "--compile",
    "compiled-bf16": "--precision bf16 --compile",
    "openvino-fp32": "--backend openvino",
    "openvino-bf16": "--backend openvino --precision bf16",
}
_OPTIMIZE_CALLS = {
    "eager-fp32": "the model itself",
    "fused-fp32": "lateral.optimize(model)",
    "fused-bf16": "lateral.optimize(model, precision='bf16')",
    "compiled-fp32": "lateral.optimize(model, compile=True)",
    "compiled-bf16": "lateral.optimize(model, precision='bf16', compile=True)",
    "openvino-fp32": "lateral.inference.exporters.OpenVinoRunner(model, x)",
    "openvino-bf16": "lateral.inference.exporters.OpenVinoRunner(model, x, precision='bf16')",
}


def how_to_run_fastest(result: BenchmarkResult, recognizer: bool) -> str:
    """Lines naming the fastest fp32 and the fastest bf16 variant of ``result`` and how to run each: the flags of
    ``lateral predict`` for a recognizer, the Python call otherwise, the export command for onnxruntime."""
    eager = next((v for v in result.variants if v.name == "eager-fp32" and v.times), None)
    lines = []
    for precision in ("fp32", "bf16"):
        best = result.fastest(precision)
        if best is None:
            continue
        median = statistics.median(best.times)
        ratio = f", {statistics.median(eager.times) / median:.2f}x eager fp32" if eager is not None else ""
        if best.name == "onnxruntime":
            how = "lateral export CONFIG CKPT --format onnx, then run the file with onnxruntime"
        elif recognizer:
            how = f"lateral predict CONFIG CKPT VIDEO {_PREDICT_FLAGS[best.name]}"
        else:
            how = _OPTIMIZE_CALLS[best.name]
        lines.append(f"fastest {precision} here: {best.name} ({1e3 * median:.1f} ms{ratio}); run it with: {how}")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    """``lateral bench``: time the inference variants of a config's model, interleaved, and print a table."""
    from lateral.engine.exporting import build_from_files, example_input, exportable_module
    from lateral.inference.optimization import PRECISIONS, PrecisionError, resolve_precision
    from lateral.inference.timing import benchmark

    precisions = list(dict.fromkeys(p.strip() for p in args.precision.split(",") if p.strip()))  # once each
    if not precisions or any(precision not in PRECISIONS for precision in precisions):
        raise ConfigError(f"--precision takes a comma-separated list of {sorted(PRECISIONS)}, got '{args.precision}'")
    if "bf16" in precisions and not args.force_bf16:
        on_unsupported = "fp32" if args.fallback_fp32 else "error"
        try:
            if resolve_precision("bf16", "cpu", on_unsupported) == "fp32":
                precisions = [p for p in precisions if p != "bf16"] or ["fp32"]
        except PrecisionError as err:
            print(f"lateral bench: error: {err}", file=sys.stderr)
            return 1
    if args.variants:
        names = list(dict.fromkeys(n.strip() for n in args.variants.split(",") if n.strip()))
        if not names:
            raise ConfigError(f"--variants takes a comma-separated list of {', '.join(VARIANTS)}")
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise ConfigError(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    else:
        names = bench_variants(precisions, args.compile, args.onnx, args.openvino)
    model, cfg = build_from_files(args.config, _weights_of(args), args.cfg_options)
    module, note = exportable_module(model)
    if note:
        print(note.replace("exporting", "timing"))
    x = example_input(args.input, module, cfg)
    result = benchmark(
        module,
        x,
        names,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        force_bf16=args.force_bf16,
        measure_peaks=not args.no_peak,
    )
    print(result.table(f"lateral bench {args.config}"))
    print(how_to_run_fastest(result, recognizer=hasattr(module, "cls_head")))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.as_dict(), indent=1))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``export`` and ``bench``."""
    p = subparsers.add_parser("export", help="export a recognizer or FPN backbone to ONNX or TorchScript")
    p.add_argument("config", help="config file (.py), or a checkpoint carrying its config")
    p.add_argument("checkpoint", nargs="?", help="checkpoint to load ('none' or omitted: random weights)")
    p.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        help="onnx (needs the 'onnx' extra to check) or torchscript (trace)",
    )
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    p.add_argument(
        "--check",
        action="store_true",
        help="run the exported file and PyTorch on the same input and print the max difference",
    )
    p.add_argument(
        "--input",
        help="example input NxCxTxHxW (default: the config's test pipeline, its views of one "
        "video x 3 x clip_len x crop size; 1x3x800x1216 for 2D)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime threads for --check")
    add_cfg_options(p)
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "bench", help="time eager / fused / bf16 / compiled / ONNX / OpenVINO inference, interleaved"
    )
    p.add_argument("config", help="config file (.py), or a checkpoint carrying its config")
    p.add_argument("checkpoint", nargs="?", help="checkpoint to load ('none' or omitted: random weights)")
    p.add_argument(
        "--input",
        help="input NxCxTxHxW (default: the config's test pipeline, its views of one video x 3 "
        "x clip_len x crop size; 1x3x800x1216 for 2D)",
    )
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32,bf16 (default fp32)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (inductor, freezing)")
    p.add_argument("--onnx", action="store_true", help="also time onnxruntime (the 'onnx' extra)")
    p.add_argument("--openvino", action="store_true", help="also time OpenVINO (the 'openvino' extra)")
    p.add_argument(
        "--variants", help=f"explicit comma-separated list instead of the flags above: {', '.join(VARIANTS)}"
    )
    p.add_argument("--threads", type=positive_int, default=2, help="threads for PyTorch and the runtimes (default 2)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repetitions of each variant (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of each variant first (default 1)")
    p.add_argument("--fallback-fp32", action="store_true", help="without native bf16, drop bf16 instead of failing")
    p.add_argument("--force-bf16", action="store_true", help="time bf16 even without native bf16 (very slow)")
    p.add_argument("--no-peak", action="store_true", help="skip the fp32/bf16 peak probes (no %% of peak column)")
    p.add_argument("--json", help="also write the measurements to this JSON file")
    add_cfg_options(p)
    p.set_defaults(func=run_bench)
