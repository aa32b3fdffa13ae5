"""Inference timing for ``lateral bench`` and ``benchmarks/inference.py``: MAC counts, peak probes, interleaved runs.

Timings on a shared machine drift by tens of percent within a minute, so variants are never timed one after the
other: every repetition runs each variant once, in turn, and the ratios that matter (to eager fp32) are taken from
the medians of the same run. GFLOP/s count 2 FLOPs per multiply-add and are set against peaks this module measures
itself with a large channels-last conv3d, in the same process and thread setting.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lateral.errors import InputError
from lateral.inference.exporters import OnnxRuntimeRunner, OpenVinoRunner, export_onnx, flatten_outputs
from lateral.inference.optimization import bf16_supported, compile_available, optimize
from lateral.inference.winograd import route_summary

__all__ = [
    "BenchmarkResult",
    "Variant",
    "benchmark",
    "VARIANTS",
    "build_variant",
    "count_macs",
    "flop_counter_macs",
    "format_table",
    "measure_peak",
    "parse_input_shape",
    "run_interleaved",
]

# the names ``lateral bench`` and ``benchmarks/inference.py`` accept, in the order they are reported
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


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1x3x32x224x224' -> (1, 3, 32, 224, 224)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--input must look like 1x3x32x224x224 (N x C x T x H x W), got '{text}'") from None
    if len(shape) not in (4, 5) or min(shape) < 1:
        raise InputError(f"--input must have 4 (N x C x H x W) or 5 (N x C x T x H x W) positive sizes, got '{text}'")
    return shape


# ------------------------------------------------------------------------------------------------- FLOP counting


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of ``model`` on ``x``, from forward hooks on conv and linear layers.

    A conv producing ``out [N, C_out, *S]`` costs ``out.numel() * C_in / groups * prod(kernel)``; a linear layer
    ``out.numel() * in_features``. Pooling, norms and element-wise ops are not counted (fvcore's convention).
    """
    total = 0

    def conv_hook(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    def linear_hook(module: nn.Linear, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one forward pass as counted by ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


def measure_peak(
    dtype: torch.dtype = torch.float32, repeats: int = 5, shape: Sequence[int] = (1, 256, 8, 28, 28)
) -> float:
    """GFLOP/s of a large channels-last 3x3x3 conv3d (256 -> 256 channels): the practical peak of this machine.

    Takes the best of ``repeats`` calls, with the current ``torch.get_num_threads()``.
    """
    channels = shape[1]
    conv = nn.Conv3d(channels, channels, 3, padding=1, bias=False).eval().to(dtype)
    conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(*shape).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    macs = math.prod(shape) * channels * 27
    best = float("inf")
    with torch.no_grad():
        conv(x)
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return 2 * macs / best / 1e9


# ------------------------------------------------------------------------------------------------------ variants


@dataclass
class Variant:
    """One way of running the model: ``run()`` does one forward pass on the fixed input.

    Attributes:
        name: one of :data:`VARIANTS`.
        run: the timed call.
        setup_seconds: one-off cost before the first timed call (optimise / compile / export / convert, plus the
            first call, which is where torch.compile builds its kernels).
        note: what a reader should know (e.g. the precision a runtime really used).
        check: max |difference| of the variant's output from eager fp32 (logits, or the first output), divided
            by max |eager output|.
        times: the timed repetitions, seconds.
    """

    name: str
    run: Callable[[], Any]
    setup_seconds: float = 0.0
    note: str = ""
    check: float = float("nan")
    times: list[float] = field(default_factory=list)


def _first_output(out: Any) -> torch.Tensor:
    return flatten_outputs(out)[0].float()


def build_variant(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    threads: int,
    reference: torch.Tensor | None = None,
    force_bf16: bool = False,
) -> Variant:
    """Prepare variant ``name`` of ``model`` for input ``x`` and time its one-off setup.

    Args:
        name: one of :data:`VARIANTS`.
        model: the eager model in eval mode (left untouched).
        x: the benchmark input, float32 in the default layout.
        threads: threads for onnxruntime / OpenVINO (PyTorch's are set by the caller).
        reference: eager fp32 output for the parity column.
        force_bf16: build bf16 variants even on a CPU without native bf16 (hundreds of times slower).

    Raises:
        RuntimeError: the variant cannot run here (the message says why); the caller reports it and goes on.
    """
    if name not in VARIANTS:
        raise InputError(f"unknown variant '{name}'; choose from {', '.join(VARIANTS)}")
    if name.endswith("bf16") and not bf16_supported("cpu") and not force_bf16:
        raise RuntimeError(f"no native bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()})")
    start = time.perf_counter()
    note = ""
    if name == "eager-fp32":
        run = _no_grad(model, x)
    elif name in ("fused-fp32", "fused-bf16", "compiled-fp32", "compiled-bf16"):
        compile = name.startswith("compiled")
        if compile:
            ok, why = compile_available()
            if not ok:
                raise RuntimeError(f"torch.compile cannot build kernels here: {why}")
        opt = optimize(model, precision=name.rsplit("-", 1)[1], compile=compile, on_unsupported="warn")
        run = _no_grad(opt, x)
    elif name == "onnxruntime":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, f"{tmp}/model.onnx", x)
            onnx_runner = OnnxRuntimeRunner(path, threads=threads)
        run = lambda: onnx_runner(x)  # noqa: E731
    else:
        openvino_runner = OpenVinoRunner(model, x, precision=name.rsplit("-", 1)[1], threads=threads)
        note = f"ran as {openvino_runner.inference_precision}"
        run = lambda: openvino_runner(x)  # noqa: E731
    out = run()  # the first call: where torch.compile compiles, and the fp32 copy times its Winograd routes
    setup = time.perf_counter() - start
    if name.startswith("fused"):
        note = route_summary(opt)
    check = float("nan")
    if reference is not None:  # relative to the output's scale: FPN levels of random weights reach 1e3
        check = (_first_output(out) - reference).abs().max().item() / max(reference.abs().max().item(), 1e-12)
    return Variant(name, run, setup_seconds=setup, note=note, check=check)


def _no_grad(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return module(x)

    return run


def run_interleaved(variants: Sequence[Variant], repeats: int, warmup: int = 1) -> None:
    """Time every variant ``repeats`` times, one call of each in turn per repetition; fills ``variant.times``."""
    for _ in range(warmup):
        for variant in variants:
            variant.run()
    for _ in range(repeats):
        for variant in variants:
            start = time.perf_counter()
            variant.run()
            variant.times.append(time.perf_counter() - start)


def format_table(
    variants: Sequence[Variant],
    macs: int,
    peak_fp32: float,
    peak_bf16: float | None,
    title: str = "",
    reference: str = "eager-fp32",
) -> str:
    """A text table: median and min-max ms, ratio to ``reference``, GFLOP/s and % of the matching peak, setup."""
    eager = next((v for v in variants if v.name == reference and v.times), None)
    eager_median = statistics.median(eager.times) if eager else None
    header = (
        f"{'variant':<17}{'median ms':>11}{'min-max ms':>17}{'x eager':>9}{'GFLOP/s':>9}{'% peak':>8}"
        f"{'setup s':>9}{'rel diff':>11}  note"
    )
    lines = [title, header, "-" * len(header)] if title else [header, "-" * len(header)]
    for variant in variants:
        if not variant.times:
            lines.append(f"{variant.name:<17}{'skipped':>11}  {variant.note}")
            continue
        median = statistics.median(variant.times)
        ratio = f"{eager_median / median:.2f}" if eager_median else "-"
        gflops = 2 * macs / median / 1e9
        peak = peak_bf16 if variant.name.endswith("bf16") else peak_fp32
        percent = f"{100 * gflops / peak:.0f}" if peak else "-"
        span = f"{1e3 * min(variant.times):.0f}-{1e3 * max(variant.times):.0f}"
        lines.append(
            f"{variant.name:<17}{1e3 * median:>11.1f}{span:>17}{ratio:>9}{gflops:>9.1f}{percent:>8}"
            f"{variant.setup_seconds:>9.1f}{variant.check:>11.2e}  {variant.note}"
        )
    return "\n".join(lines)


@dataclass
class BenchmarkResult:
    """Everything one benchmark of one model measured (see :func:`benchmark`)."""

    variants: list[Variant]
    macs: int
    flop_counter_macs: int
    peak_fp32: float
    peak_bf16: float | None
    input_shape: tuple[int, ...]
    threads: int

    def table(self, title: str = "") -> str:
        head = (
            f"{title}\ninput {'x'.join(map(str, self.input_shape))}, {self.threads} threads, "
            f"{self.macs / 1e9:.2f} GMAC by conv/linear hooks ({self.flop_counter_macs / 1e9:.2f} by FlopCounterMode) "
            f"= {2 * self.macs / 1e9:.1f} GFLOP per call; peaks (channels-last conv3d): fp32 "
            + (f"{self.peak_fp32:.0f} GFLOP/s" if self.peak_fp32 else "not measured")
            + ", bf16 "
            + (f"{self.peak_bf16:.0f} GFLOP/s" if self.peak_bf16 else "n/a (not measured or no native bf16)")
        )
        return head + "\n" + format_table(self.variants, self.macs, self.peak_fp32, self.peak_bf16)

    def fastest(self, precision: str | None = None) -> Variant | None:
        """The timed variant with the lowest median, among those of ``precision`` ('fp32' or 'bf16'; onnxruntime
        counts as fp32) if given; None if no such variant ran."""
        timed = [v for v in self.variants if v.times]
        if precision is not None:
            timed = [
                v
                for v in timed
                if v.name.rsplit("-", 1)[-1] == precision or (precision == "fp32" and v.name == "onnxruntime")
            ]
        return min(timed, key=lambda v: statistics.median(v.times), default=None)

    def as_dict(self) -> dict:
        rows = {}
        for v in self.variants:
            rows[v.name] = {
                "times_s": v.times,
                "median_s": statistics.median(v.times) if v.times else None,
                "setup_s": v.setup_seconds,
                "max_rel_diff": v.check,
                "note": v.note,
            }
        return {
            "input_shape": list(self.input_shape),
            "threads": self.threads,
            "macs": self.macs,
            "flop_counter_macs": self.flop_counter_macs,
            "peak_fp32_gflops": self.peak_fp32,
            "peak_bf16_gflops": self.peak_bf16,
            "variants": rows,
        }


def benchmark(
    model: nn.Module,
    x: torch.Tensor,
    variant_names: Sequence[str],
    threads: int,
    repeats: int = 5,
    warmup: int = 1,
    force_bf16: bool = False,
    measure_peaks: bool = True,
    log: Callable[[str], None] = print,
) -> BenchmarkResult:
    """Build each variant of ``model``, then time them interleaved; eager fp32 is always included.

    Args:
        model: the eager model (put in eval mode; not modified).
        x: input, e.g. [1, 3, 32, 224, 224].
        variant_names: names from :data:`VARIANTS`.
        threads: ``torch.set_num_threads`` and the runtimes' thread count.
        repeats: timed repetitions of each variant.
        warmup: untimed calls of each variant before timing.
        force_bf16: run bf16 variants even without native bf16 support.
        measure_peaks: probe the fp32 / bf16 peaks before and after timing (a few seconds each); without them
            the table has no "% peak" column values.
        log: progress messages.
    """
    torch.set_num_threads(threads)
    model.eval()
    names = ["eager-fp32"] + [n for n in variant_names if n != "eager-fp32"]
    macs = count_macs(model, x)
    counted = flop_counter_macs(model, x)
    peak_fp32 = measure_peak(torch.float32) if measure_peaks else 0.0
    peak_bf16 = measure_peak(torch.bfloat16) if measure_peaks and bf16_supported("cpu") else None
    log(f"MACs {macs / 1e9:.3f} G (FlopCounterMode {counted / 1e9:.3f} G); peak fp32 {peak_fp32:.0f} GFLOP/s")
    with torch.no_grad():
        reference = _first_output(model(x))
    variants: list[Variant] = []
    for name in names:
        log(f"preparing {name} ...")
        try:
            variant = build_variant(name, model, x, threads, reference, force_bf16)
        except Exception as err:  # one runtime failing must not lose the others' numbers
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            log(f"  {name} skipped: {reason}")
            variants.append(Variant(name, run=lambda: None, note=f"skipped: {reason}"))
            continue
        log(f"  {name}: setup {variant.setup_seconds:.1f} s, max relative difference to eager {variant.check:.2e}")
        variants.append(variant)
    runnable = [v for v in variants if not v.note.startswith("skipped")]
    log(f"timing {len(runnable)} variants x {repeats} interleaved repetitions ...")
    run_interleaved(runnable, repeats, warmup)
    # a second probe after the timed runs: keep the higher one, the machine's load changes while we time
    if measure_peaks:
        peak_fp32 = max(peak_fp32, measure_peak(torch.float32))
    if peak_bf16 is not None:
        peak_bf16 = max(peak_bf16, measure_peak(torch.bfloat16))
    return BenchmarkResult(variants, macs, counted, peak_fp32, peak_bf16, tuple(x.shape), threads)
