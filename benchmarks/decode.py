"""Decode speed: lateral's seek-and-decode-forward reader against decoding the whole video, in one run.

Makes a 10 s 340x256 H.264 file (25 fps, one keyframe every 250 frames, B-frames) and measures

- a training clip (32 frames, interval 2, random offset): ms per clip, lateral vs decode-everything-then-index;
- a 30-view test video (10 clips x 32 frames, interval 2; the three crops cost no decoding): ms per video;
- decode + augment (the issue's training pipeline) with 2 DataLoader workers: clips/s;
- optionally SlowFast-R50's forward pass on one 32x224x224 clip on this machine, for scale.

Usage: ``python benchmarks/decode.py [--video PATH ...] [--repeats 8] [--threads 1] [--model]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lateral.data import PyAVReader, build_dataloader, build_dataset, write_video
from lateral.data.sampling import sample_frame_indices

TRAIN_PIPELINE = [
    dict(type="DecordInit"),
    dict(type="SampleFrames", clip_len=32, frame_interval=2, num_clips=1),
    dict(type="DecordDecode"),
    dict(type="Resize", scale=(-1, 256)),
    dict(type="RandomResizedCrop"),
    dict(type="Resize", scale=(224, 224), keep_ratio=False),
    dict(type="Flip", flip_ratio=0.5),
    dict(type="FormatShape", input_format="NCTHW"),
    dict(type="PackActionInputs"),
]


def make_benchmark_video(path: Path, seconds: float = 10.0, fps: int = 25, height: int = 256, width: int = 340) -> Path:
    """A panning random texture with moving blocks and noise: content an encoder cannot make trivially small."""
    rng = np.random.default_rng(0)
    num_frames = int(seconds * fps)
    texture = rng.integers(0, 255, size=(height // 8 + 2, 2 * width // 8 + 2, 3), dtype=np.uint8)
    texture = texture.repeat(8, axis=0).repeat(8, axis=1)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frame = texture[:height, 2 * t % width : 2 * t % width + width].astype(np.int16)
        y, x = (3 * t) % (height - 40), (5 * t) % (width - 40)
        frame[y : y + 40, x : x + 40] = 255 - frame[y : y + 40, x : x + 40]
        frame += rng.integers(-6, 7, size=frame.shape, dtype=np.int16)
        frames[t] = np.clip(frame, 0, 255)
    return write_video(path, frames, fps=fps, gop_size=250, quality="medium")


def decode_naive(path: Path, indices: np.ndarray, threads: int) -> np.ndarray:
    """The baseline: decode every frame to RGB, then index."""
    with PyAVReader(path, num_threads=threads) as reader:
        return reader.decode_all()[indices]


def decode_lateral(path: Path, indices: np.ndarray, threads: int) -> np.ndarray:
    with PyAVReader(path, num_threads=threads) as reader:
        return reader.get_frames(indices)


def time_pair(arguments: list) -> tuple[float, float]:
    """Median wall times in ms of lateral's and the naive decoder over the argument tuples, alternating the two
    so that noise from other processes falls on both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for args in arguments:
        for fn, out in ((decode_lateral, times[0]), (decode_naive, times[1])):
            start = time.perf_counter()
            fn(*args)
            out.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_video(path: Path, repeats: int, threads: int) -> dict[str, float]:
    with PyAVReader(path) as reader:
        num_frames = reader.num_frames
    rng = np.random.default_rng(0)
    train = [(path, sample_frame_indices(num_frames, 32, 2, 1, rng=rng).reshape(-1), threads) for _ in range(repeats)]
    test = [(path, sample_frame_indices(num_frames, 32, 2, 10, test_mode=True).reshape(-1), threads)] * max(
        2, repeats // 3
    )
    # the same frames either way
    np.testing.assert_array_equal(decode_lateral(*train[0]), decode_naive(*train[0]))
    figures = {"num_frames": num_frames}
    figures["train_lateral"], figures["train_naive"] = time_pair(train)
    figures["test_lateral"], figures["test_naive"] = time_pair(test)
    return figures


def bench_loader(path: Path, workers: int, clips: int) -> tuple[float, float]:
    """(clips/s with ``workers`` DataLoader workers, ms per clip in this process) for the training pipeline."""
    with tempfile.TemporaryDirectory() as tmp:
        ann = Path(tmp) / "list.txt"
        ann.write_text("".join(f"{path} 0\n" for _ in range(clips)))
        dataset = build_dataset(dict(type="VideoDataset", ann_file=str(ann), pipeline=TRAIN_PIPELINE))
        start = time.perf_counter()
        for i in range(4):
            dataset[i]
        single_ms = (time.perf_counter() - start) * 1000 / 4
        loader = build_dataloader(dataset, batch_size=1, num_workers=workers, shuffle=True)
        iterator = iter(loader)
        next(iterator)  # worker start-up is not throughput
        start = time.perf_counter()
        count = sum(batch["inputs"].shape[0] for batch in iterator)
        rate = count / (time.perf_counter() - start)
        del iterator, loader
    return rate, single_ms


def bench_model() -> float | None:
    """ms of one SlowFast-R50 forward pass on a 32x224x224 clip, or None when the model cannot be built."""
    try:
        from lateral.registry import build_model

        config = Path(__file__).resolve().parents[1] / "configs" / "_base_" / "models" / "slowfast_r50.py"
        model = build_model(str(config)).eval()
    except Exception as err:  # the model code is another part of the project; the decode figures stand alone
        print(f"(SlowFast-R50 not measured: {type(err).__name__}: {err})")
        return None
    clip = torch.randn(1, 3, 32, 224, 224)
    backbone = getattr(model, "backbone", model)
    with torch.no_grad():
        backbone(clip)
        start = time.perf_counter()
        backbone(clip)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", action="append", default=[], help="also measure this video (repeatable)")
    parser.add_argument("--repeats", type=int, default=8, help="training clips timed per decoder")
    parser.add_argument("--threads", type=int, default=1, help="decoder threads for both decoders (0: auto)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the throughput figure")
    parser.add_argument("--model", action="store_true", help="also time SlowFast-R50's forward pass")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        made = make_benchmark_video(Path(tmp) / "bench_340x256_gop250.mp4")
        videos = [made] + [Path(v) for v in args.video]
        print(f"decoder threads: {args.threads}; {args.repeats} training clips (32 x interval 2, random offset)")
        print(f"{'video':34s} {'frames':>6s} {'train clip ms':>22s} {'30-view test ms':>22s}")
        columns = f"{'lateral':>7s} {'naive':>7s} {'ratio':>6s}"
        print(f"{'':34s} {'':6s} {columns} {columns}")
        for video in videos:
            f = bench_video(video, args.repeats, args.threads)
            print(
                f"{video.name[:34]:34s} {f['num_frames']:6d} {f['train_lateral']:7.1f} {f['train_naive']:7.1f} "
                f"{f['train_naive'] / f['train_lateral']:5.1f}x {f['test_lateral']:7.1f} {f['test_naive']:7.1f} "
                f"{f['test_naive'] / f['test_lateral']:5.1f}x"
            )
        rate, single_ms = bench_loader(made, args.workers, clips=12)
        print(
            f"decode + augment (issue's training pipeline, 224x224 output): {single_ms:.0f} ms per clip in one "
            f"process; {rate:.1f} clips/s with {args.workers} workers"
        )
    if args.model:
        forward_ms = bench_model()
        if forward_ms is not None:
            print(
                f"SlowFast-R50 forward, 1 x 32x224x224 clip, {torch.get_num_threads()} torch threads: "
                f"{forward_ms:.0f} ms -> decode+augment is {forward_ms / single_ms:.1f}x faster per clip"
            )


if __name__ == "__main__":
    main()
