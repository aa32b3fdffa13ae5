"""The synthetic motion dataset: real files, list files, determinism, classes that need time."""

from __future__ import annotations

import numpy as np

from lateral.data import PyAVReader, build_dataset
from lateral.data.synthetic import MOTION_CLASSES, make_motion_dataset, render_motion_clip


def test_files_lists_and_determinism(tmp_path):
    first = make_motion_dataset(tmp_path / "a", 1, 1, num_frames=16, size=32, seed=3)
    make_motion_dataset(tmp_path / "b", 1, 1, num_frames=16, size=32, seed=3)
    make_motion_dataset(tmp_path / "c", 1, 0, num_frames=16, size=32, seed=4)
    assert first["num_classes"] == len(MOTION_CLASSES) == 8
    train = (tmp_path / "a" / "train_list.txt").read_text().splitlines()
    assert len(train) == 8 and train[0] == "videos/move_right/move_right_train_0000.mp4 0"
    assert (tmp_path / "a" / "label_map.txt").read_text().split() == list(MOTION_CLASSES)
    relative = train[3].split()[0]
    # the same seed renders the very same frames ...
    again = render_motion_clip("move_up", 16, 32, np.random.default_rng([3, 0, 3, 0]))
    assert np.array_equal(again, render_motion_clip("move_up", 16, 32, np.random.default_rng([3, 0, 3, 0])))
    # ... the same files, byte for byte (x264's mbtree made 1 in 8 tiny encodes differ before lateral.data.writer
    # turned it off) ...
    for path in sorted((tmp_path / "a").rglob("*.mp4")):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path
    # ... which decode to the rendered frames within the encoder's loss
    decoded = {}
    for name in ("a", "c"):
        with PyAVReader(tmp_path / name / relative) as reader:
            assert reader.num_frames == 16 and (reader.height, reader.width) == (32, 32)
            decoded[name] = reader.get_frames(list(range(16))).astype(np.int16)
    assert np.abs(decoded["a"] - again).mean() < 8.0  # crf 18 on frames with sensor noise: about 5.5
    assert np.abs(decoded["a"] - decoded["c"]).mean() > 10.0  # another seed, another clip
    dataset = build_dataset(
        dict(
            type="VideoDataset",
            ann_file=first["test_list"],
            data_prefix=dict(video=first["data_prefix"]),
            pipeline=[
                dict(type="PyAVInit"),
                dict(type="SampleFrames", clip_len=8, frame_interval=2, test_mode=True),
                dict(type="PyAVDecode"),
                dict(type="FormatShape", input_format="NCTHW"),
                dict(type="PackActionInputs"),
            ],
        )
    )
    assert len(dataset) == 8 and dataset[7]["label"] == 7 and dataset[7]["inputs"].shape == (1, 3, 8, 32, 32)


def test_motion_decides_the_class_not_the_first_frame():
    rng = np.random.default_rng(0)
    for motion, (sign_x, sign_y) in (("move_right", (1, 0)), ("move_down", (0, 1)), ("move_left", (-1, 0))):
        frames = render_motion_clip(motion, 40, 64, np.random.default_rng(int(rng.integers(1000))))
        background = np.median(frames, axis=0)  # the object moves on, so the median is the background
        shifts = []
        for t in range(5):
            # the shift that best carries the object's pixels of frame t onto frame t + 1
            mask = np.abs(frames[t].astype(np.int32) - background).max(axis=-1) > 40
            errors = {}
            for dx in range(-3, 4):
                for dy in range(-3, 4):
                    moved = np.roll(frames[t], (dy, dx), axis=(0, 1)).astype(np.int32)
                    moved_mask = np.roll(mask, (dy, dx), axis=(0, 1))
                    errors[(dx, dy)] = np.abs(moved - frames[t + 1])[moved_mask].mean()
            shifts.append(min(errors, key=errors.get))
        mean_dx = np.mean([s[0] for s in shifts])
        mean_dy = np.mean([s[1] for s in shifts])
        assert np.sign(round(mean_dx)) == sign_x and np.sign(round(mean_dy)) == sign_y, (motion, shifts)
    # same generator state, different motion: the first frames are identical, so one frame cannot tell them apart
    right = render_motion_clip("move_right", 8, 64, np.random.default_rng(5))
    left = render_motion_clip("move_left", 8, 64, np.random.default_rng(5))
    np.testing.assert_array_equal(right[0], left[0])
    assert not np.array_equal(right[-1], left[-1])


def test_progress_bar_over_the_videos_written_only_when_asked(tmp_path, capsys):
    make_motion_dataset(tmp_path / "quiet", num_train_per_class=1, num_test_per_class=0, num_frames=4, size=16)
    assert capsys.readouterr().err == ""
    make_motion_dataset(
        tmp_path / "shown", num_train_per_class=1, num_test_per_class=1, num_frames=4, size=16, progress=True
    )
    err = capsys.readouterr().err
    assert "writing videos" in err and f"/{2 * len(MOTION_CLASSES)}" in err
