"""A small synthetic action dataset whose classes differ only in motion, written as real video files.

Every clip shows one textured object over a noisy background. The class is how the object moves: it drifts
right / left / down / up (wrapping around the frame edges), rotates clockwise / counter-clockwise in place, or
oscillates horizontally / vertically. Start positions, angles, colours, textures, sizes, speeds and background are
random and wrap-around keeps every position equally likely at every frame, so no single frame tells the class:
a model has to use time. A fixed seed gives identical files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lateral.data.writer import write_video
from lateral.errors import InputError

__all__ = ["MOTION_CLASSES", "render_motion_clip", "make_motion_dataset"]

MOTION_CLASSES: tuple[str, ...] = (
    "move_right",
    "move_left",
    "move_down",
    "move_up",
    "rotate_clockwise",
    "rotate_counterclockwise",
    "oscillate_horizontal",
    "oscillate_vertical",
)

_DIRECTIONS = {"move_right": (1, 0), "move_left": (-1, 0), "move_down": (0, 1), "move_up": (0, -1)}


def render_motion_clip(motion: str, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one clip of ``motion`` (a name from :data:`MOTION_CLASSES`).

    Returns:
        uint8 ``[num_frames, size, size, 3]``.
    """
    if motion not in MOTION_CLASSES:
        raise InputError(f"unknown motion '{motion}', expected one of {', '.join(MOTION_CLASSES)}")
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]

    # background: a random colour, a static blotchy pattern and fresh sensor noise in every frame
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    blotches = rng.normal(0, 10, size=(size // 16, size // 16, 3)).astype(np.float32)
    background = base + blotches.repeat(16, axis=0).repeat(16, axis=1)
    frames = background + 6 * rng.standard_normal((num_frames, size, size, 3), dtype=np.float32)

    # the object: a square or a disk with a coarse texture in two colours that stand out from the background
    # (one lighter, one darker, so the object is visible and its rotation too), at a random size
    half = rng.uniform(0.18, 0.25) * size
    is_disk = rng.random() < 0.5
    light = np.clip(base + rng.uniform(60, 110, size=3), 0, 255)
    dark = np.clip(base - rng.uniform(60, 110, size=3), 0, 255)
    palette = np.stack([light, dark]).astype(np.float32)
    grid = 3
    texture = palette[rng.permutation(np.arange(grid * grid) % 2).reshape(grid, grid)]  # [grid, grid, 3]
    center = rng.uniform(0, size, size=2)
    angle = np.float32(rng.uniform(0, 2 * np.pi)) * np.ones_like(t)
    offset = np.zeros((2,) + t.shape, dtype=np.float32)
    if motion in _DIRECTIONS:
        speed = rng.uniform(1.0, 2.5)
        direction = np.array(_DIRECTIONS[motion], dtype=np.float32)
        offset = direction[:, None, None, None] * speed * t[None]
    elif motion.startswith("rotate"):
        step = np.deg2rad(rng.uniform(10, 18))  # below 45 degrees per sampled frame (interval 2): no aliasing
        # image y points down, so a growing angle turns the object clockwise on screen
        angle = angle + (step if motion == "rotate_clockwise" else -step) * t
    else:
        amplitude = rng.uniform(0.08, 0.18) * size
        period = rng.uniform(8, 16)
        phase = rng.uniform(0, 2 * np.pi)
        axis = 0 if motion == "oscillate_horizontal" else 1
        offset[axis] = amplitude * np.sin(2 * np.pi * t / period + phase)

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    # signed distance to the object's centre on a torus: the object wraps around the frame edges
    dx = (xs[None] - center[0] - offset[0] + size / 2) % size - size / 2
    dy = (ys[None] - center[1] - offset[1] + size / 2) % size - size / 2
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * dx + sin * dy  # frame pixel in the object's own (rotated) coordinates
    v = -sin * dx + cos * dy
    inside = (u * u + v * v < half * half) if is_disk else (np.abs(u) < half) & (np.abs(v) < half)
    col = np.clip(((u + half) / (2 * half) * grid).astype(np.int64), 0, grid - 1)
    row = np.clip(((v + half) / (2 * half) * grid).astype(np.int64), 0, grid - 1)
    frames = np.where(inside[..., None], texture[row, col], frames)
    return np.clip(frames, 0, 255).astype(np.uint8)


def make_motion_dataset(
    root: str | os.PathLike,
    num_train_per_class: int,
    num_test_per_class: int,
    num_frames: int = 32,
    size: int = 64,
    seed: int = 0,
    fps: float = 25.0,
    extension: str = ".mp4",
    progress: bool = False,
) -> dict:
    """Write the motion dataset: videos plus mmaction2 list files and a label map.

    Layout under ``root``: ``videos/<class>/<class>_<split>_<i>.mp4``, ``train_list.txt`` and ``test_list.txt``
    (``videos/... label`` lines, paths relative to ``root``), ``label_map.txt`` (one class name per line).

    Args:
        root: output folder (created).
        num_train_per_class, num_test_per_class: clips per class in each split.
        num_frames: frames per clip (32-48 suit SlowFast's 32-frame clips).
        size: frame height and width in pixels (even).
        seed: fixes every random choice: the same seed writes the same files.
        fps: frame rate of the files.
        extension: container (``.mp4``, ``.webm``, ``.avi``, ``.mkv``).
        progress: show a progress bar over the videos written (on stderr).

    Returns:
        ``dict(root, data_prefix, train_list, test_list, label_map, classes, num_classes, num_frames, size, fps)``;
        ``data_prefix`` is what to pass as ``dict(video=...)``.
    """
    if size % 2:
        raise InputError(f"size must be even (yuv420p video), got {size}")
    if num_frames < 2:
        raise InputError(f"num_frames must be at least 2, got {num_frames}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    total = (num_train_per_class + num_test_per_class) * len(MOTION_CLASSES)
    bar = tqdm(total=total, desc="writing videos", unit="video", disable=not progress, leave=False)
    lists = {}
    for split_id, (split, per_class) in enumerate((("train", num_train_per_class), ("test", num_test_per_class))):
        lines = []
        for class_id, motion in enumerate(MOTION_CLASSES):
            for i in range(per_class):
                # one generator per clip: any clip can be regenerated alone, and the order of writing is irrelevant
                rng = np.random.default_rng([seed, split_id, class_id, i])
                frames = render_motion_clip(motion, num_frames, size, rng)
                relative = Path("videos") / motion / f"{motion}_{split}_{i:04d}{extension}"
                write_video(root / relative, frames, fps=fps, quality="medium")
                bar.update()
                lines.append(f"{relative.as_posix()} {class_id}")
        list_file = root / f"{split}_list.txt"
        list_file.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        lists[split] = str(list_file)
    bar.close()
    label_map = root / "label_map.txt"
    label_map.write_text("\n".join(MOTION_CLASSES) + "\n", encoding="utf-8")
    return dict(
        root=str(root),
        data_prefix=str(root),
        train_list=lists["train"],
        test_list=lists["test"],
        label_map=str(label_map),
        classes=list(MOTION_CLASSES),
        num_classes=len(MOTION_CLASSES),
        num_frames=num_frames,
        size=size,
        fps=fps,
    )
