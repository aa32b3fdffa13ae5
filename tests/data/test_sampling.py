"""Frame sampling: parity with mmaction2's test-mode indices, and train-mode behaviour under a seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lateral.data import DenseSampleFrames, SampleFrames, UniformSample, build_pipeline, seed_data_rng
from lateral.data.sampling import sample_frame_indices

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "sampleframes_test_mode.json"


@pytest.mark.parametrize(
    "case",
    json.loads(GOLDEN.read_text()),
    ids=lambda c: (
        f"T{c['total_frames']}-{c['clip_len']}x{c['frame_interval']}x{c['num_clips']}-{c['out_of_bound_opt']}"
    ),
)
def test_test_mode_indices_equal_mmaction2(case):
    step = SampleFrames(
        case["clip_len"],
        case["frame_interval"],
        case["num_clips"],
        out_of_bound_opt=case["out_of_bound_opt"],
        test_mode=case["test_mode"],
    )
    results = step(dict(total_frames=case["total_frames"], start_index=0))
    assert results["frame_inds"].tolist() == case["frame_inds"]
    assert (results["clip_len"], results["frame_interval"], results["num_clips"]) == (
        case["clip_len"],
        case["frame_interval"],
        case["num_clips"],
    )


def test_start_index_is_added():
    results = SampleFrames(4, 2, 2, test_mode=True)(dict(total_frames=20, start_index=1))
    plain = SampleFrames(4, 2, 2, test_mode=True)(dict(total_frames=20, start_index=0))
    np.testing.assert_array_equal(results["frame_inds"], plain["frame_inds"] + 1)


def test_train_mode_is_random_in_range_and_repeatable_under_a_seed():
    step = SampleFrames(clip_len=8, frame_interval=4, num_clips=3)
    seed_data_rng(3)
    first = [step(dict(total_frames=120, start_index=0))["frame_inds"] for _ in range(20)]
    seed_data_rng(3)
    second = [step(dict(total_frames=120, start_index=0))["frame_inds"] for _ in range(20)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert len({tuple(a) for a in first}) > 1
    for inds in first:
        clips = inds.reshape(3, 8)
        assert np.all(np.diff(clips, axis=1) == 4)
        assert inds.min() >= 0 and inds.max() < 120
        # one clip start per segment of (120 - 8 * 4 + 1) // 3 = 29 frames, as mmaction2
        assert np.all(clips[:, 0] // 29 == np.arange(3))


def test_temporal_jitter_stays_inside_the_interval():
    rng = np.random.default_rng(0)
    inds = sample_frame_indices(200, 8, 4, 1, test_mode=True, temporal_jitter=True, rng=rng)
    base = sample_frame_indices(200, 8, 4, 1, test_mode=True)
    offsets = inds - base
    assert offsets.min() >= 0 and offsets.max() < 4 and offsets.any()


def test_short_video_repeat_last_and_loop():
    loop = sample_frame_indices(10, 8, 2, 1, test_mode=True, out_of_bound_opt="loop")
    last = sample_frame_indices(10, 8, 2, 1, test_mode=True, out_of_bound_opt="repeat_last")
    assert loop.tolist() == [[0, 2, 4, 6, 8, 0, 2, 4]]
    assert last.tolist() == [[0, 2, 4, 6, 8, 8, 8, 8]]


def test_dense_sample_frames_test_mode():
    results = DenseSampleFrames(
        clip_len=4, frame_interval=2, num_clips=2, sample_range=32, num_sample_positions=3, test_mode=True
    )(dict(total_frames=100, start_index=0))
    clips = results["frame_inds"].reshape(-1, 4)
    # starts 0, 34, 68 (linspace over 100 - 32 + 1 positions), clips 16 apart inside the window
    assert clips[:, 0].tolist() == [0, 16, 34, 50, 68, 84]
    assert results["num_clips"] == 2


def test_uniform_sample_test_mode_and_train_segments():
    results = UniformSample(clip_len=4, num_clips=1, test_mode=True)(dict(total_frames=41, start_index=0))
    # segments of 10 frames; the single test clip takes the middle of each
    assert results["frame_inds"].tolist() == [5, 15, 25, 35]
    seed_data_rng(0)
    for _ in range(10):
        inds = UniformSample(clip_len=4)(dict(total_frames=41, start_index=0))["frame_inds"]
        assert all(10 * i <= v <= 10 * (i + 1) for i, v in enumerate(inds))


def test_sampling_errors_are_clear():
    with pytest.raises(Exception, match="out_of_bound_opt"):
        build_pipeline([dict(type="SampleFrames", clip_len=8, out_of_bound_opt="wrap")])
    with pytest.raises(Exception, match="Did you mean 'frame_interval'"):
        build_pipeline([dict(type="SampleFrames", clip_len=8, frame_intervals=2)])
    with pytest.raises(ValueError, match="0 frames"):
        sample_frame_indices(0, 8)
