"""Which frames of a video make up the clips: mmaction2's frame samplers.

The functions return 0-based frame indices ``[num_clips, clip_len]``; the mmaction2-named classes
(:class:`SampleFrames`, :class:`DenseSampleFrames`, :class:`UniformSample`) wrap them for results dicts.
Test-mode indices equal mmaction2's (``tests/fixtures/golden/sampleframes_test_mode.json``).

Random choices (train mode, augmentations) draw from one numpy generator per process, :func:`data_rng`; seed it
with :func:`seed_data_rng`. :func:`lateral.data.build_dataloader` seeds it in every worker, differently per worker.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lateral.errors import InputError

__all__ = [
    "data_rng",
    "seed_data_rng",
    "sample_clip_offsets",
    "sample_frame_indices",
    "dense_frame_indices",
    "uniform_frame_indices",
    "SampleFrames",
    "DenseSampleFrames",
    "UniformSample",
]

_rng = np.random.default_rng()


def data_rng() -> np.random.Generator:
    """The generator behind every random choice of the data pipeline in this process."""
    return _rng


def seed_data_rng(seed: int) -> None:
    """Make the data pipeline's random choices in this process repeatable."""
    global _rng
    _rng = np.random.default_rng(seed)


def sample_clip_offsets(
    num_frames: int,
    ori_clip_len: float,
    num_clips: int,
    test_mode: bool,
    clip_len: int = 2,
    twice_sample: bool = False,
    keep_tail_frames: bool = False,
    floor_offsets: bool = False,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """First frame of each clip, as mmaction2's ``SampleFrames`` chooses it.

    Args:
        num_frames: frames in the video.
        ori_clip_len: frames one clip spans in the video.
        num_clips: clips to take.
        test_mode: evenly spaced clips (test) instead of one random clip per segment (train).
        clip_len: frames per clip; ``1`` selects the 2D-recognizer (TSN) test layout.
        twice_sample: in test mode, also take a second set of clips (TSN's "twice sample").
        keep_tail_frames: train mode: let the segments reach the last frames of the video.
        floor_offsets: test mode with ``target_fps``: floor the spacing instead of rounding the offsets.
        rng: generator for train mode; :func:`data_rng` by default.

    Returns:
        Clip offsets ``[num_clips]`` (``[2 * num_clips]`` with ``twice_sample``), possibly fractional for
        ``clip_len == 1``.
    """
    rng = rng or data_rng()
    if test_mode:
        if clip_len == 1:
            avg_interval = num_frames / float(num_clips)
            base_offsets: np.ndarray = np.arange(num_clips) * avg_interval
            clip_offsets = base_offsets + avg_interval / 2.0
            if twice_sample:
                clip_offsets = np.concatenate([clip_offsets, base_offsets])
            return clip_offsets
        max_offset = max(num_frames - ori_clip_len, 0)
        total_clips = num_clips * 2 if twice_sample else num_clips
        if total_clips > 1:
            # spacing follows num_clips, not total_clips, as in mmaction2 (and PySlowFast)
            num_segments = num_clips - 1
            if floor_offsets:
                offset_between = np.floor(max_offset / float(num_segments))
                return np.arange(total_clips) * offset_between
            offset_between = max_offset / float(num_segments) if num_segments else 0.0
            return np.round(np.arange(total_clips) * offset_between)
        return np.array([max_offset // 2])

    if keep_tail_frames:
        avg_interval = (num_frames - ori_clip_len + 1) / float(num_clips)
        if num_frames > ori_clip_len - 1:
            base_offsets = np.arange(num_clips) * avg_interval
            return (base_offsets + rng.uniform(0, avg_interval, num_clips)).astype(np.int64)
        return np.zeros((num_clips,), dtype=np.int64)
    avg_interval = int((num_frames - ori_clip_len + 1) // num_clips)
    if avg_interval > 0:
        base_offsets = np.arange(num_clips) * avg_interval
        return base_offsets + rng.integers(avg_interval, size=num_clips)
    if num_frames > max(num_clips, ori_clip_len):
        return np.sort(rng.integers(int(num_frames - ori_clip_len + 1), size=num_clips))
    if avg_interval == 0:
        ratio = (num_frames - ori_clip_len + 1.0) / num_clips
        return np.around(np.arange(num_clips) * ratio)
    return np.zeros((num_clips,), dtype=np.int64)


def _bound(frame_inds: np.ndarray, num_frames: int, out_of_bound_opt: str) -> np.ndarray:
    """Map indices past the end back into the video, per clip (rows of ``frame_inds``)."""
    if out_of_bound_opt == "loop":
        return np.mod(frame_inds, num_frames)
    if out_of_bound_opt == "repeat_last":
        safe = frame_inds < num_frames
        last = np.max(np.where(safe, frame_inds, 0), axis=1, keepdims=True)
        return np.where(safe, frame_inds, last)
    raise InputError(f"out_of_bound_opt must be 'loop' or 'repeat_last', got '{out_of_bound_opt}'")


def sample_frame_indices(
    num_frames: int,
    clip_len: int,
    frame_interval: int = 1,
    num_clips: int = 1,
    test_mode: bool = False,
    temporal_jitter: bool = False,
    twice_sample: bool = False,
    out_of_bound_opt: str = "loop",
    keep_tail_frames: bool = False,
    fps_scale_ratio: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices of ``num_clips`` clips of ``clip_len`` frames, ``frame_interval`` apart (mmaction2's
    ``SampleFrames``).

    Args:
        num_frames: frames in the video.
        clip_len: frames per clip.
        frame_interval: step between sampled frames.
        num_clips: clips per video.
        test_mode: evenly spaced, deterministic clips.
        temporal_jitter: add a random offset in ``[0, frame_interval)`` to every index.
        twice_sample: test mode: a second set of clips.
        out_of_bound_opt: ``'loop'`` wraps past the end, ``'repeat_last'`` repeats the clip's last valid frame.
        keep_tail_frames: train mode: segments cover the tail of the video.
        fps_scale_ratio: video fps / target fps, when sampling at a target frame rate (None: off).
        rng: generator for the random choices; :func:`data_rng` by default.

    Returns:
        int64 indices ``[num_clips, clip_len]`` (``2 * num_clips`` rows with ``twice_sample``), 0-based.
    """
    rng = rng or data_rng()
    if num_frames < 1:
        raise InputError(f"cannot sample frames from a video with {num_frames} frames")
    if fps_scale_ratio is not None:
        ori_clip_len = max(1.0, clip_len * frame_interval * fps_scale_ratio)
    elif test_mode:
        ori_clip_len = (clip_len - 1) * frame_interval + 1
    else:
        ori_clip_len = clip_len * frame_interval
    clip_offsets = sample_clip_offsets(
        num_frames,
        ori_clip_len,
        num_clips,
        test_mode,
        clip_len=clip_len,
        twice_sample=twice_sample,
        keep_tail_frames=keep_tail_frames,
        floor_offsets=fps_scale_ratio is not None,
        rng=rng,
    )
    if fps_scale_ratio is not None:
        steps = np.linspace(0, ori_clip_len - 1, clip_len).astype(np.int64)
    else:
        steps = np.arange(clip_len) * frame_interval
    frame_inds = (clip_offsets[:, None] + steps[None, :]).astype(np.int64)
    if temporal_jitter:
        frame_inds = frame_inds + rng.integers(frame_interval, size=frame_inds.shape)
    return _bound(frame_inds, num_frames, out_of_bound_opt)


def dense_frame_indices(
    num_frames: int,
    clip_len: int,
    frame_interval: int = 1,
    num_clips: int = 1,
    sample_range: int = 64,
    num_sample_positions: int = 10,
    test_mode: bool = False,
    temporal_jitter: bool = False,
    out_of_bound_opt: str = "loop",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """mmaction2's ``DenseSampleFrames``: clips inside a window of ``sample_range`` frames; in test mode the
    window is placed at ``num_sample_positions`` evenly spaced starts.

    Returns:
        int64 indices ``[num_clips, clip_len]`` (``num_clips * num_sample_positions`` rows in test mode).
    """
    rng = rng or data_rng()
    if num_frames < 1:
        raise InputError(f"cannot sample frames from a video with {num_frames} frames")
    sample_position = max(1, 1 + num_frames - sample_range)
    interval = sample_range // num_clips
    base_offsets = np.arange(num_clips) * interval
    if test_mode:
        starts = np.linspace(0, sample_position - 1, num=num_sample_positions, dtype=int)
        clip_offsets = np.concatenate([(base_offsets + start) % num_frames for start in starts])
    else:
        start = 0 if sample_position == 1 else int(rng.integers(0, sample_position - 1))
        clip_offsets = (base_offsets + start) % num_frames
    frame_inds = clip_offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    if temporal_jitter:
        frame_inds = frame_inds + rng.integers(frame_interval, size=frame_inds.shape)
    return _bound(frame_inds.astype(np.int64), num_frames, out_of_bound_opt)


def uniform_frame_indices(
    num_frames: int, clip_len: int, num_clips: int = 1, test_mode: bool = False, rng: np.random.Generator | None = None
) -> np.ndarray:
    """mmaction2's ``UniformSample`` (from PySlowFast's SSv2 loader): split the video into ``clip_len`` equal
    segments and take one frame from each; random within the segment in train mode, at ``k / (num_clips + 1)``
    of it for test clip ``k``.

    Returns:
        int64 indices ``[num_clips, clip_len]`` in test mode, ``[1, clip_len]`` in train mode.
    """
    rng = rng or data_rng()
    seg_size = float(num_frames - 1) / clip_len
    if not test_mode:
        starts = [int(np.round(seg_size * i)) for i in range(clip_len)]
        ends = [int(np.round(seg_size * (i + 1))) for i in range(clip_len)]
        return np.array([[int(rng.integers(s, e + 1)) for s, e in zip(starts, ends)]], dtype=np.int64)
    duration = seg_size / (num_clips + 1)
    return np.array(
        [[int(np.round(seg_size * i)) + int(duration * (k + 1)) for i in range(clip_len)] for k in range(num_clips)],
        dtype=np.int64,
    )


class SampleFrames:
    """Sample clips of frame indices (mmaction2 ``SampleFrames``).

    Reads ``total_frames``, ``start_index`` (0 when absent), ``avg_fps`` (with ``target_fps``).
    Adds ``frame_inds`` (flat int array over all clips, plus ``start_index``), ``clip_len``, ``frame_interval``,
    ``num_clips``.

    Args:
        clip_len: frames per clip.
        frame_interval: step between sampled frames.
        num_clips: clips per video.
        temporal_jitter: random offset in ``[0, frame_interval)`` per index.
        twice_sample: test mode: a second set of clips.
        out_of_bound_opt: ``'loop'`` or ``'repeat_last'``.
        test_mode: evenly spaced deterministic clips.
        keep_tail_frames: train mode: segments cover the tail.
        target_fps: sample as if the video ran at this frame rate (needs ``avg_fps`` in the results).
    """

    def __init__(
        self,
        clip_len: int,
        frame_interval: int = 1,
        num_clips: int = 1,
        temporal_jitter: bool = False,
        twice_sample: bool = False,
        out_of_bound_opt: str = "loop",
        test_mode: bool = False,
        keep_tail_frames: bool = False,
        target_fps: float | None = None,
    ):
        if out_of_bound_opt not in ("loop", "repeat_last"):
            raise InputError(f"out_of_bound_opt must be 'loop' or 'repeat_last', got '{out_of_bound_opt}'")
        if clip_len < 1 or frame_interval < 1 or num_clips < 1:
            raise InputError(
                f"clip_len, frame_interval and num_clips must be >= 1, got {clip_len}, {frame_interval}, {num_clips}"
            )
        self.clip_len = clip_len
        self.frame_interval = frame_interval
        self.num_clips = num_clips
        self.temporal_jitter = temporal_jitter
        self.twice_sample = twice_sample
        self.out_of_bound_opt = out_of_bound_opt
        self.test_mode = test_mode
        self.keep_tail_frames = keep_tail_frames
        self.target_fps = target_fps

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        fps = results.get("avg_fps")
        fps_scale_ratio = fps / self.target_fps if self.target_fps and fps else None
        if self.target_fps and not fps:
            fps_scale_ratio = 1.0
        frame_inds = sample_frame_indices(
            int(results["total_frames"]),
            self.clip_len,
            self.frame_interval,
            self.num_clips,
            self.test_mode,
            self.temporal_jitter,
            self.twice_sample,
            self.out_of_bound_opt,
            self.keep_tail_frames,
            fps_scale_ratio,
        )
        results["frame_inds"] = frame_inds.reshape(-1) + int(results.get("start_index", 0))
        results["clip_len"] = self.clip_len
        results["frame_interval"] = self.frame_interval
        results["num_clips"] = self.num_clips
        return results

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(clip_len={self.clip_len}, frame_interval={self.frame_interval}, "
            f"num_clips={self.num_clips}, test_mode={self.test_mode})"
        )


class DenseSampleFrames(SampleFrames):
    """Dense clips inside a ``sample_range`` window (mmaction2 ``DenseSampleFrames``).

    Reads ``total_frames``, ``start_index``. Adds ``frame_inds``, ``clip_len``, ``frame_interval``, ``num_clips``
    (in test mode ``frame_inds`` holds ``num_clips * num_sample_positions`` clips; ``FormatShape`` folds the extra
    positions into the views).
    """

    def __init__(
        self,
        clip_len: int,
        frame_interval: int = 1,
        num_clips: int = 1,
        sample_range: int = 64,
        num_sample_positions: int = 10,
        temporal_jitter: bool = False,
        out_of_bound_opt: str = "loop",
        test_mode: bool = False,
    ):
        super().__init__(
            clip_len,
            frame_interval,
            num_clips,
            temporal_jitter=temporal_jitter,
            out_of_bound_opt=out_of_bound_opt,
            test_mode=test_mode,
        )
        self.sample_range = sample_range
        self.num_sample_positions = num_sample_positions

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        frame_inds = dense_frame_indices(
            int(results["total_frames"]),
            self.clip_len,
            self.frame_interval,
            self.num_clips,
            self.sample_range,
            self.num_sample_positions,
            self.test_mode,
            self.temporal_jitter,
            self.out_of_bound_opt,
        )
        results["frame_inds"] = frame_inds.reshape(-1) + int(results.get("start_index", 0))
        results["clip_len"] = self.clip_len
        results["frame_interval"] = self.frame_interval
        results["num_clips"] = self.num_clips
        return results


class UniformSample:
    """One frame from each of ``clip_len`` equal segments (mmaction2 ``UniformSample``).

    Reads ``total_frames``, ``start_index``. Adds ``frame_inds``, ``clip_len``, ``frame_interval`` (None),
    ``num_clips``.
    """

    def __init__(self, clip_len: int, num_clips: int = 1, test_mode: bool = False):
        self.clip_len = clip_len
        self.num_clips = num_clips
        self.test_mode = test_mode

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        frame_inds = uniform_frame_indices(int(results["total_frames"]), self.clip_len, self.num_clips, self.test_mode)
        results["frame_inds"] = frame_inds.reshape(-1) + int(results.get("start_index", 0))
        results["clip_len"] = self.clip_len
        results["frame_interval"] = None
        results["num_clips"] = frame_inds.shape[0]
        return results
