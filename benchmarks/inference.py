"""One-run CPU benchmark of lateral's inference paths (issue 6): SlowFast R50 and FPN-50, all variants interleaved.

    .venv/bin/python benchmarks/inference.py                       # everything, 5 repetitions, 2 threads
    .venv/bin/python benchmarks/inference.py --models slowfast --variants eager-fp32,fused-fp32 --repeats 3
    .venv/bin/python benchmarks/inference.py --models train       # bf16 + channels-last training step

For each model, every variant is built first (its one-off optimise / compile / export / convert time is
recorded), then timed in interleaved repetitions: repetition i runs each variant once, in turn, so load changes on
a shared machine hit all variants alike and the ratios to eager fp32 come from one run. Printed per variant: median
and min-max latency, ratio to eager fp32, achieved GFLOP/s (2 FLOPs per multiply-add, MACs counted with conv/linear
hooks and cross-checked with FlopCounterMode) and its share of the fp32 / bf16 peak that a large channels-last
conv3d reaches in the same process. See benchmarks/README.md.
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
from lateral.inference.optimization import bf16_supported  # noqa: E402
from lateral.inference.timing import VARIANTS, Variant, benchmark, format_table, parse_input_shape, run_interleaved  # noqa: E402

SLOWFAST_CONFIG = ROOT / "configs/recognition/slowfast/slowfast_r50_4x16x1_kinetics400.py"
MODELS = ("slowfast", "fpn", "train")
TRAIN_VARIANTS = ("train-eager-fp32", "train-cl-fp32", "train-cl-bf16")


def build_slowfast() -> nn.Module:
    """The seed SlowFast R50 4x16 (random weights: timing does not depend on their values)."""
    torch.manual_seed(0)
    return lateral.build_model(str(SLOWFAST_CONFIG)).eval()


def build_fpn() -> nn.Module:
    """FPN-50 of the seed layout (trainable BN, P2..P5)."""
    from lateral.models.fpn import ResNetFPN

    torch.manual_seed(0)
    return ResNetFPN(depth=50, style="seed").eval()


def train_variants(model: nn.Module, x: torch.Tensor, names: list[str], force_bf16: bool) -> list[Variant]:
    """One SGD step (forward, cross-entropy, backward, update) per call, in the layouts / precisions named.

    ``train-eager-fp32``: the default layout in fp32 (the reference); ``train-cl-fp32``: channels_last_3d model
    and input; ``train-cl-bf16``: channels_last_3d with ``torch.autocast('cpu', torch.bfloat16)``.
    """
    labels = torch.arange(x.shape[0]) % model.num_classes
    variants = []
    for name in names:
        if name.endswith("bf16") and not bf16_supported("cpu") and not force_bf16:
            variants.append(Variant(name, run=lambda: None, note="skipped: no native bf16 on this CPU"))
            continue
        start = time.perf_counter()
        trained = copy.deepcopy(model).train()
        inputs = x
        if "-cl-" in name:
            trained = trained.to(memory_format=torch.channels_last_3d)
            inputs = x.contiguous(memory_format=torch.channels_last_3d)
        optimizer = torch.optim.SGD(trained.parameters(), lr=1e-4, momentum=0.9)
        use_bf16 = name.endswith("bf16")

        def step(trained=trained, inputs=inputs, optimizer=optimizer, use_bf16=use_bf16) -> float:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = trained.loss(inputs, labels)["loss_cls"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.item()

        step()
        variants.append(Variant(name, run=step, setup_seconds=time.perf_counter() - start))
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="slowfast,fpn", help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed interleaved repetitions (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each variant first (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="threads for PyTorch and the runtimes (default 2)")
    parser.add_argument("--slowfast-input", default="1x3x32x224x224")
    parser.add_argument("--fpn-input", default="1x3x800x1216")
    parser.add_argument("--train-input", default="2x3x32x224x224", help="batch of the training-step comparison")
    parser.add_argument("--force-bf16", action="store_true", help="run bf16 variants without native bf16 (very slow)")
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument(
        "--keep-heap",
        action="store_true",
        help="keep freed memory in glibc's heap for every variant, eager included "
        "(lateral.heap; what lateral predict does)",
    )
    args = parser.parse_args(argv)
    if args.keep_heap:
        from lateral.heap import keep_freed_memory

        print(f"keep freed memory in the heap: {keep_freed_memory()}")

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [m for m in models if m not in MODELS] + [v for v in names if v not in VARIANTS]
    if bad:
        parser.error(f"unknown model or variant names {bad}")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: "
        f"{bf16_supported('cpu')}, {args.threads} threads, {args.repeats} interleaved repetitions"
    )
    report: dict = {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__}
    tables = []
    for model_name in models:
        if model_name == "train":
            model = build_slowfast()
            x = torch.randn(parse_input_shape(args.train_input))
            from lateral.inference.timing import count_macs

            # forward + backward is about 3x the forward multiply-adds
            macs = 3 * count_macs(model, x)
            variants = train_variants(model, x, list(TRAIN_VARIANTS), args.force_bf16)
            run_interleaved([v for v in variants if not v.note.startswith("skipped")], args.repeats, args.warmup)
            title = f"== training step (SGD), input {args.train_input}; GFLOP/s from 3x the forward MACs"
            tables.append(format_table(variants, macs, 0.0, None, title=title, reference=TRAIN_VARIANTS[0]))
            report["train"] = {
                v.name: {
                    "times_s": v.times,
                    "median_s": statistics.median(v.times) if v.times else None,
                    "note": v.note,
                }
                for v in variants
            }
        else:
            model = build_slowfast() if model_name == "slowfast" else build_fpn()
            shape = parse_input_shape(args.slowfast_input if model_name == "slowfast" else args.fpn_input)
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
            print(f"\n== {model_name} {'x'.join(map(str, shape))}")
            result = benchmark(
                model,
                x,
                names,
                threads=args.threads,
                repeats=args.repeats,
                warmup=args.warmup,
                force_bf16=args.force_bf16,
            )
            tables.append(result.table(f"== {model_name}"))
            report[model_name] = result.as_dict()
        print("\n" + tables[-1], flush=True)
    print("\n\n".join(["", "SUMMARY", *tables]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
