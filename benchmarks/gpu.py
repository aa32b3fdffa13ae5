"""Clips per second on a GPU (issue 6): eager fp32 against AMP + channels-last, for inference and a training step.

    .venv/bin/python benchmarks/gpu.py                                  # seed SlowFast R50, batch 8, CUDA, bf16 AMP
    .venv/bin/python benchmarks/gpu.py --amp fp16 --compile --repeats 20
    .venv/bin/python benchmarks/gpu.py --device cpu --config thin.py --input 2x3x8x32x32 --repeats 2   # smoke run

Variants, timed interleaved (repetition i runs each variant once, in turn), every call ending in a device
synchronisation so that a repetition measures finished work:

- ``infer-eager-fp32``: the model as built, eval mode, default layout, fp32 (the reference of the inference rows);
- ``infer-cl-amp``: channels_last_3d model and clips under ``torch.autocast`` (``--amp``);
- ``infer-compiled-amp`` (``--compile``): the same through ``torch.compile``;
- ``train-eager-fp32`` / ``train-cl-amp``: one SGD step (forward, cross-entropy, backward, update), with a grad
  scaler for fp16.

Prints median / min-max ms, clips/s and the ratio to the eager fp32 row of the same kind; ``--json`` keeps every
timing. Record GPU results in benchmarks/README.md with the device name this prints.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lateral  # noqa: E402
from lateral.inference.timing import Variant, parse_input_shape, run_interleaved  # noqa: E402

SLOWFAST_CONFIG = ROOT / "configs/recognition/slowfast/slowfast_r50_4x16x1_kinetics400.py"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_variant(
    name: str, model: nn.Module, clips: torch.Tensor, amp: torch.dtype | None, channels_last: bool, compile: bool
) -> Variant:
    """One forward pass per call, without autograd."""
    start = time.perf_counter()
    model = copy.deepcopy(model).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    forward = torch.compile(model) if compile else model

    def run() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(clips.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = forward(clips)
        synchronize(clips.device)
        return out

    run()  # the first call: where torch.compile builds its kernels
    return Variant(name, run, setup_seconds=time.perf_counter() - start)


def training_variant(
    name: str, model: nn.Module, clips: torch.Tensor, amp: torch.dtype | None, channels_last: bool
) -> Variant:
    """One SGD step per call: forward, cross-entropy, backward (grad-scaled for fp16), update."""
    start = time.perf_counter()
    model = copy.deepcopy(model).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    labels = torch.arange(clips.shape[0], device=clips.device) % model.num_classes
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(clips.device.type, enabled=amp == torch.float16)

    def run() -> float:
        with torch.autocast(clips.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = model.loss(clips, labels)["loss_cls"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        synchronize(clips.device)
        return loss.item()

    run()
    return Variant(name, run, setup_seconds=time.perf_counter() - start)


def table(variants: list[Variant], batch: int, reference: str) -> str:
    base = next(v for v in variants if v.name == reference)
    base_median = statistics.median(base.times)
    lines = [f"{'variant':<22}{'median ms':>11}{'min-max ms':>17}{'clips/s':>10}{'x eager':>9}{'setup s':>9}"]
    for variant in variants:
        median = statistics.median(variant.times)
        span = f"{1e3 * min(variant.times):.1f}-{1e3 * max(variant.times):.1f}"
        lines.append(
            f"{variant.name:<22}{1e3 * median:>11.1f}{span:>17}{batch / median:>10.1f}{base_median / median:>9.2f}"
            f"{variant.setup_seconds:>9.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(SLOWFAST_CONFIG), help="recognizer config (default: seed SlowFast R50)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run)")
    parser.add_argument("--input", default="8x3x32x224x224", help="inference batch NxCxTxHxW (default 8x3x32x224x224)")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch size (default: half of N)")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default="bf16", help="autocast dtype (default bf16)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the AMP model")
    parser.add_argument("--repeats", type=int, default=10, help="timed interleaved repetitions (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant first (default 2)")
    parser.add_argument("--json", help="write every timing to this file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: this benchmark is for GPUs (use --device cpu for a smoke run)")
    shape = parse_input_shape(args.input)
    if len(shape) != 5:
        parser.error(f"--input must be N x C x T x H x W, got '{args.input}'")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        where = (
            f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
    else:
        where = f"CPU ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {where}; AMP {args.amp}; {args.repeats} interleaved repetitions")

    torch.manual_seed(0)
    try:
        model = lateral.build_model(args.config).to(device)
    except lateral.ConfigError as err:
        parser.error(str(err))
    clips = torch.randn(shape, device=device)
    train_clips = clips[: args.train_batch or max(1, shape[0] // 2)]
    amp = AMP_DTYPES[args.amp]

    inference = [
        inference_variant("infer-eager-fp32", model, clips, None, channels_last=False, compile=False),
        inference_variant("infer-cl-amp", model, clips, amp, channels_last=True, compile=False),
    ]
    if args.compile:
        inference.append(inference_variant("infer-compiled-amp", model, clips, amp, channels_last=True, compile=True))
    training = [
        training_variant("train-eager-fp32", model, train_clips, None, channels_last=False),
        training_variant("train-cl-amp", model, train_clips, amp, channels_last=True),
    ]
    run_interleaved(inference + training, args.repeats, args.warmup)
    print(f"\n== inference, batch {shape[0]} clips of {'x'.join(map(str, shape[1:]))}")
    print(table(inference, shape[0], "infer-eager-fp32"))
    print(f"\n== training step (SGD), batch {train_clips.shape[0]}")
    print(table(training, train_clips.shape[0], "train-eager-fp32"))
    if args.json:
        report = {
            "device": where,
            "amp": args.amp,
            "input": args.input,
            "times_s": {v.name: v.times for v in inference + training},
        }
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
