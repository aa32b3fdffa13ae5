"""Numbered frames for the data tests: a frame's grey level tells its index."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MEDIA = Path(__file__).resolve().parents[2] / ".." / "shared" / "media"

# decode, sample 4 frames 2 apart, resize and crop to 16x16: a clip [1, 3, 4, 16, 16] per item
TINY_CLIP_PIPELINE = [
    dict(type="DecordInit"),
    dict(type="SampleFrames", clip_len=4, frame_interval=2, num_clips=1, test_mode=True),
    dict(type="DecordDecode"),
    dict(type="Resize", scale=(-1, 16)),
    dict(type="CenterCrop", crop_size=16),
    dict(type="FormatShape", input_format="NCTHW"),
    dict(type="PackActionInputs"),
]


def numbered_frames(num_frames: int, height: int = 32, width: int = 48, step: int = 5) -> np.ndarray:
    """Frame ``t`` is the flat grey level ``(t * step) % 250``, so its intensity identifies it (within codec error):
    ``[T, H, W, 3]`` uint8."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frames[t] = (t * step) % 250
    return frames


def frame_numbers(frames: np.ndarray, step: int = 5) -> np.ndarray:
    """Invert :func:`numbered_frames` (valid while ``t * step < 250``): ``[T, H, W, 3] -> [T]``."""
    return np.round(np.asarray(frames).reshape(len(frames), -1).mean(axis=1) / step).astype(np.int64)


def blocky_noise(num_frames: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random frames made of 4x4 blocks (content codecs keep well, unlike per-pixel noise): ``[T, S, S, 3]`` uint8."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, size=(num_frames, size, size, 3), dtype=np.uint8)
    return np.repeat(np.repeat(frames[:, ::4, ::4], 4, axis=1), 4, axis=2)
