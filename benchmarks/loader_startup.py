"""How much starting DataLoader workers from a fork server costs against forking (issue 18).

Writes a few small synthetic videos, then, for each start method in one run, builds a fresh loader with
persistent workers in a fresh Python process and times (a) the first batch, which includes starting the workers
(and, for the fork server, its imports of torch, numpy, PyAV and lateral.data), and (b) a whole second epoch, which
reuses the workers. Each method runs in its own process so that a fork server started by one does not serve the
next. ``fork`` is safe here only because nothing in the measuring process decodes before the loader starts.

    .venv/bin/python benchmarks/loader_startup.py [--workers 2] [--videos 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = [
    dict(type="DecordInit"),
    dict(type="SampleFrames", clip_len=8, frame_interval=2, num_clips=1, test_mode=True),
    dict(type="DecordDecode"),
    dict(type="Resize", scale=(-1, 64)),
    dict(type="CenterCrop", crop_size=64),
    dict(type="FormatShape", input_format="NCTHW"),
    dict(type="PackActionInputs"),
]


def measure(folder: str, method: str, workers: int) -> dict[str, float]:
    """In this process: seconds to the first batch, and for the whole second epoch."""
    from lateral.data import build_dataloader, build_dataset

    dataset = build_dataset(
        dict(
            type="VideoDataset",
            ann_file=f"{folder}/list.txt",
            data_prefix=dict(video=f"{folder}/videos"),
            pipeline=PIPELINE,
        )
    )
    started = time.perf_counter()
    loader = build_dataloader(dataset, batch_size=2, num_workers=workers, start_method=method)
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - started
    for _ in batches:
        pass
    started = time.perf_counter()
    for _ in loader:
        pass
    return {"first_batch_s": first, "second_epoch_s": time.perf_counter() - started}


def write_videos(folder: Path, count: int) -> None:
    import numpy as np

    from lateral.data import write_video

    rng = np.random.default_rng(0)
    lines = []
    for index in range(count):
        frames = rng.integers(0, 255, size=(48, 96, 128, 3), dtype=np.uint8)
        write_video(folder / "videos" / f"v{index}.mp4", frames, quality="medium")
        lines.append(f"v{index}.mp4 {index % 4}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", nargs=2, metavar=("FOLDER", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.workers)))
        return
    with tempfile.TemporaryDirectory() as folder:
        write_videos(Path(folder), args.videos)
        results: dict[str, list[dict[str, float]]] = {"fork": [], "forkserver": [], "spawn": []}
        for _ in range(args.repeats):  # interleaved, so that a slow phase of the machine hits every method
            for method in results:
                cmd = [sys.executable, __file__, "--workers", str(args.workers), "--measure", folder, method]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                results[method].append(json.loads(out.strip().splitlines()[-1]))
    base = statistics.median(r["first_batch_s"] for r in results["fork"])
    print(f"{args.workers} workers, {args.videos} videos of 48 frames 128x96, batch 2; median of {args.repeats}")
    print(f"{'start method':<12} {'first batch':>12} {'vs fork':>8} {'2nd epoch':>10}")
    for method, runs in results.items():
        first = statistics.median(r["first_batch_s"] for r in runs)
        epoch = statistics.median(r["second_epoch_s"] for r in runs)
        print(f"{method:<12} {first:>11.2f}s {first - base:>+7.2f}s {epoch:>9.2f}s")


if __name__ == "__main__":
    main()
