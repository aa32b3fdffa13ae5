"""Datasets over every supported layout, bad samples, collate and the DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import TINY_CLIP_PIPELINE as PIPELINE
from data_helpers import numbered_frames
from PIL import Image

from lateral.config import ConfigError
from lateral.data import build_dataloader, build_dataset, collate, load_label_map, write_video


@pytest.fixture
def video_list(tmp_path):
    """Three 16-frame mp4 files under videos/ and a ``path label`` list (one path with a space)."""
    names = ["a.mp4", "b.mp4", "with space.mp4"]
    for i, name in enumerate(names):
        write_video(tmp_path / "videos" / name, numbered_frames(16 + 8 * i))
    ann = tmp_path / "train_list.txt"
    ann.write_text("a.mp4 0\nb.mp4 2\n\nwith space.mp4 1\n")
    return tmp_path, ann


def video_cfg(root, ann, **kwargs):
    return dict(
        type="VideoDataset",
        ann_file=str(ann),
        data_prefix=dict(video=str(root / "videos")),
        pipeline=PIPELINE,
        **kwargs,
    )


def test_video_dataset_items(video_list):
    root, ann = video_list
    dataset = build_dataset(video_cfg(root, ann))
    assert len(dataset) == 3
    item = dataset[2]
    assert item["label"] == 1
    assert item["inputs"].shape == (1, 3, 4, 16, 16) and item["inputs"].dtype == torch.uint8
    assert item["meta"]["filename"].endswith("with space.mp4")
    # 32 frames, clip of 4 x 2 centred: frames 12, 14, 16, 18
    grey = item["inputs"][0].float().mean(dim=(0, 2, 3)).numpy()
    assert np.round(grey / 5).astype(int).tolist() == [12, 14, 16, 18]


def test_multi_class_labels_become_one_hot(tmp_path, video_list):
    root, _ = video_list
    ann = tmp_path / "multi.txt"
    ann.write_text("a.mp4 0 3\nb.mp4 1\n")
    dataset = build_dataset(video_cfg(root, ann, multi_class=True, num_classes=4))
    batch = collate([dataset[0], dataset[1]])
    assert batch["label"].tolist() == [[1, 0, 0, 1], [0, 1, 0, 0]]
    assert batch["label"].dtype == torch.float32


def test_zero_x_pipeline_exposes_float_inputs(video_list):
    root, ann = video_list
    pipeline = PIPELINE[:5] + [
        dict(type="Normalize", mean=[0.45] * 3, std=[0.225] * 3),
        dict(type="FormatShape", input_format="NCTHW"),
        dict(type="Collect", keys=["imgs", "label"], meta_keys=[]),
        dict(type="ToTensor", keys=["imgs", "label"]),
    ]
    dataset = build_dataset(dict(video_cfg(root, ann), pipeline=pipeline))
    item = dataset[0]
    assert item["inputs"].dtype == torch.float32 and item["inputs"].shape == (1, 3, 4, 16, 16)
    batch = collate([item, dataset[1]])
    assert batch["inputs"].shape == (2, 1, 3, 4, 16, 16)
    assert batch["label"].tolist() == [0, 2]


def test_bad_samples_return_none_and_are_recorded(video_list):
    root, ann = video_list
    good = (root / "videos" / "a.mp4").read_bytes()
    (root / "videos" / "cut.mp4").write_bytes(good[: len(good) // 3])
    (root / "videos" / "empty.mp4").write_bytes(b"")
    ann.write_text("a.mp4 0\ncut.mp4 1\nempty.mp4 1\nmissing.mp4 2\n")
    dataset = build_dataset(video_cfg(root, ann))
    items = [dataset[i] for i in range(4)]
    assert items[0] is not None and items[1:] == [None, None, None]
    reasons = dict((path.rsplit("/", 1)[-1], reason) for path, reason in dataset.failures)
    assert "cannot open" in reasons["cut.mp4"]
    assert "empty file" in reasons["empty.mp4"]
    assert reasons["missing.mp4"] == "file not found"
    assert dataset.num_failures == 3
    assert "3 sample reads failed" in dataset.failure_summary()
    batch = collate(items)
    assert batch["inputs"].shape[0] == 1 and batch["label"].tolist() == [0]
    assert collate([None, None]) is None


def test_folders_and_still_images_named_like_videos_are_skipped_with_their_reason(video_list):
    """A folder called x.mp4 and a picture renamed to .mp4 are unreadable samples, not a one-frame video."""
    root, ann = video_list
    (root / "videos" / "folder.mp4").mkdir()
    picture = Image.fromarray(numbered_frames(1)[0])
    picture.save(root / "videos" / "still.mp4", format="PNG")
    picture.save(root / "videos" / "photo.mp4", format="JPEG")
    ann.write_text("a.mp4 0\nfolder.mp4 1\nstill.mp4 2\nphoto.mp4 1\n")
    dataset = build_dataset(video_cfg(root, ann))
    items = [dataset[i] for i in range(4)]
    assert items[0] is not None and items[1:] == [None, None, None]
    reasons = dict((path.rsplit("/", 1)[-1], reason) for path, reason in dataset.failures)
    assert reasons["folder.mp4"] == "is a directory"
    assert reasons["still.mp4"].startswith("an image, not a video")
    assert reasons["photo.mp4"].startswith("an image, not a video")
    assert dataset.num_failures == 3


def test_on_error_next_replaces_the_sample(video_list):
    root, ann = video_list
    ann.write_text("missing.mp4 2\na.mp4 0\n")
    dataset = build_dataset(video_cfg(root, ann, on_error="next"))
    assert dataset[0]["label"] == 0


def test_dataloader_with_workers_drops_failures_and_counts_them(video_list):
    root, ann = video_list
    ann.write_text("a.mp4 0\nmissing.mp4 1\nb.mp4 2\nwith space.mp4 1\n")
    dataset = build_dataset(video_cfg(root, ann))
    loader = build_dataloader(dataset, batch_size=2, num_workers=1)
    batches = list(loader)
    assert [b["label"].tolist() for b in batches] == [[0], [2, 1]]
    assert batches[1]["inputs"].shape == (2, 1, 3, 4, 16, 16)
    assert dataset.num_failures == 1  # counted in the worker, visible here


def test_shuffling_and_augmentation_repeat_under_a_seed(video_list):
    root, ann = video_list
    pipeline = [
        PIPELINE[0],
        dict(type="SampleFrames", clip_len=4, frame_interval=1, num_clips=1),
        PIPELINE[2],
        dict(type="RandomResizedCrop"),
        dict(type="Resize", scale=(8, 8), keep_ratio=False),
        dict(type="Flip", flip_ratio=0.5),
        dict(type="FormatShape", input_format="NCTHW"),
        dict(type="PackActionInputs"),
    ]
    dataset = build_dataset(dict(video_cfg(root, ann), pipeline=pipeline))

    def run(seed):
        return [(b["label"].tolist(), b["inputs"]) for b in build_dataloader(dataset, 3, shuffle=True, seed=seed)]

    first, second, other = run(5), run(5), run(6)
    assert first[0][0] == second[0][0] and torch.equal(first[0][1], second[0][1])
    assert not (first[0][0] == other[0][0] and torch.equal(first[0][1], other[0][1]))


def test_missing_and_empty_inputs_fail_before_decoding(tmp_path, video_list):
    root, ann = video_list
    with pytest.raises(FileNotFoundError, match="ann_file"):
        build_dataset(video_cfg(root, tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError, match="data_prefix video folder"):
        build_dataset(dict(video_cfg(root, ann), data_prefix=dict(video=str(tmp_path / "nowhere"))))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no samples"):
        build_dataset(video_cfg(root, empty))
    broken = tmp_path / "broken.txt"
    broken.write_text("a.mp4 zero\n")
    with pytest.raises(ValueError, match="broken.txt:1: expected 'path label'"):
        build_dataset(video_cfg(root, broken))
    with pytest.raises(ValueError, match="out of range for num_classes=2"):
        build_dataset(video_cfg(root, ann, num_classes=2))
    with pytest.raises(ConfigError, match="Did you mean 'VideoDataset'"):
        build_dataset(dict(video_cfg(root, ann), type="VideoDataSet"))
    with pytest.raises(ConfigError, match="Did you mean 'data_prefix'"):
        build_dataset(dict(type="VideoDataset", ann_file=str(ann), data_prefx={}, pipeline=PIPELINE))


def test_rawframe_dataset(tmp_path):
    frames = numbered_frames(12, 16, 16)
    for name, count in (("clip_a", 12), ("clip_b", 10)):
        folder = tmp_path / "rawframes" / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(frames[i]).save(folder / f"img_{i + 1:05}.png")
    ann = tmp_path / "rawframes.txt"
    ann.write_text("clip_a 12 3\nclip_b 10 1\nclip_gone 10 0\n")
    pipeline = [
        dict(type="SampleFrames", clip_len=3, frame_interval=3, num_clips=1, test_mode=True),
        dict(type="RawFrameDecode"),
        dict(type="FormatShape", input_format="NCTHW"),
        dict(type="PackActionInputs"),
    ]
    dataset = build_dataset(
        dict(
            type="RawframeDataset",
            ann_file=str(ann),
            data_prefix=dict(img=str(tmp_path / "rawframes")),
            pipeline=pipeline,
            filename_tmpl="img_{:05}.png",
        )
    )
    item = dataset[0]
    assert item["label"] == 3 and item["inputs"].shape == (1, 3, 3, 16, 16)
    # 12 frames, clip of 3 x 3 spans 7: offset 2 -> frames 2, 5, 8 (images img_00003, ...)
    grey = item["inputs"][0].float().mean(dim=(0, 2, 3)).numpy()
    assert np.round(grey / 5).astype(int).tolist() == [2, 5, 8]
    assert dataset[2] is None and "frame folder not found" in dataset.failures[-1][1]


def test_kinetics_csv_dataset(tmp_path):
    for label, ytid in (("abseiling", "aaa"), ("air drumming", "bbb")):
        write_video(tmp_path / "k400" / label / f"{ytid}_000010_000020.mp4", numbered_frames(12))
    csv_file = tmp_path / "train.csv"
    csv_file.write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,aaa,10,20,train\n"
        "air drumming,bbb,10,20,train\nabseiling,ccc,0,10,train\n"
    )
    label_map = tmp_path / "labels.txt"
    label_map.write_text("air drumming\nabseiling\n")
    dataset = build_dataset(
        dict(
            type="KineticsCSVDataset",
            ann_file=str(csv_file),
            label_map=str(label_map),
            data_prefix=dict(video=str(tmp_path / "k400")),
            pipeline=PIPELINE,
        )
    )
    assert len(dataset) == 2 and dataset.missing == ["ccc_000000_000010"]
    assert [dataset[i]["label"] for i in range(2)] == [1, 0]


def test_class_folder_dataset_with_class_index_and_split(tmp_path):
    root = tmp_path / "UCF101"
    for cls in ("ApplyEyeMakeup", "Archery"):
        for g in (1, 2):
            write_video(root / cls / f"v_{cls}_g0{g}_c01.avi", numbered_frames(10))
    class_ind = tmp_path / "classInd.txt"
    class_ind.write_text("1 ApplyEyeMakeup\n2 Archery\n")
    split = tmp_path / "trainlist01.txt"
    split.write_text("Archery/v_Archery_g01_c01.avi 2\nApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi 1\n")
    full = build_dataset(
        dict(
            type="ClassFolderDataset", data_prefix=dict(video=str(root)), pipeline=PIPELINE, class_index=str(class_ind)
        )
    )
    assert len(full) == 4 and [s["label"] for s in full.samples] == [0, 0, 1, 1]
    part = build_dataset(
        dict(
            type="ClassFolderDataset",
            data_prefix=dict(video=str(root)),
            pipeline=PIPELINE,
            class_index=str(class_ind),
            ann_file=str(split),
        )
    )
    assert [part[i]["label"] for i in range(2)] == [1, 0]


def test_label_map_formats(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("abseiling\nair drumming\n\n")
    numbered = tmp_path / "classInd.txt"
    numbered.write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n")
    table = tmp_path / "labels.csv"
    table.write_text("id,name\n1,b\n0,a\n")
    assert load_label_map(plain) == ["abseiling", "air drumming"]
    assert load_label_map(numbered) == ["ApplyEyeMakeup", "ApplyLipstick"]
    assert load_label_map(table) == ["a", "b"]
    with pytest.raises(FileNotFoundError):
        load_label_map(tmp_path / "none.txt")
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text("2 walk\n0 run\n1 jump\n")  # 'index name' lines in any order
    assert load_label_map(shuffled) == ["run", "jump", "walk"]
    partly_numbered = tmp_path / "partly.txt"
    partly_numbered.write_text("1 one_leg_jump\nwalk\n")  # not every line numbered: names as written
    assert load_label_map(partly_numbered) == ["1 one_leg_jump", "walk"]
    for name, text, message in [
        ("gap.csv", "id,name\n0,a\n1,b\n3,c\n", "leave gaps"),
        ("dup.csv", "id,name\n0,a\n1,b\n1,c\n", r"ids \[1\] appear more than once"),
        ("short.csv", "id,name\n0\n", "line 2: expected 'id,name'"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):  # names would land on other classes
            load_label_map(tmp_path / name)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be"])
def test_label_maps_with_a_byte_order_mark_read_as_written(tmp_path, encoding):
    bom = "\ufeff" if encoding == "utf-16-be" else ""  # the utf-16 codec writes its own mark, utf-16-be none
    (tmp_path / "labels.csv").write_bytes((bom + "id,name\r\n0,move_right\r\n1,café\r\n").encode(encoding))
    assert load_label_map(tmp_path / "labels.csv") == ["move_right", "café"]  # header found, no mark in class 0


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_a_label_map_in_another_encoding_is_refused_naming_the_file_and_the_line(tmp_path, encoding):
    (tmp_path / "labels.txt").write_bytes("run\ncafé dancing\n".encode(encoding))
    with pytest.raises(
        ValueError,
        match=r"label map '.*labels.txt': byte 0xe9 at offset 7 \(line 2\) is not "
        r"UTF-8; lateral reads text files as UTF-8 \(or UTF-16 with a byte-order "
        r"mark\)",
    ):
        load_label_map(tmp_path / "labels.txt")


def test_ann_files_in_utf16_and_with_a_mark_are_read(tmp_path, video_list):
    root, _ = video_list
    utf16 = tmp_path / "utf16_list.txt"
    utf16.write_bytes("a.mp4 0\r\nwith space.mp4 1\r\n".encode("utf-16"))
    assert [s["label"] for s in build_dataset(video_cfg(root, utf16)).samples] == [0, 1]
    latin = tmp_path / "latin_list.txt"
    latin.write_bytes("a.mp4 0\nmañana.mp4 1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"ann_file '.*latin_list.txt': byte 0xf1 at offset 10 \(line 2\)"):
        build_dataset(video_cfg(root, latin))
    write_video(tmp_path / "k400" / "run" / "aaa_000010_000020.mp4", numbered_frames(12))
    csv_file = tmp_path / "train.csv"  # as Excel saves 'CSV UTF-8': a mark before the 'label' column's name
    csv_file.write_bytes("label,youtube_id,time_start,time_end,split\nrun,aaa,10,20,train\n".encode("utf-8-sig"))
    dataset = build_dataset(
        dict(
            type="KineticsCSVDataset",
            ann_file=str(csv_file),
            data_prefix=dict(video=str(tmp_path / "k400")),
            pipeline=PIPELINE,
        )
    )
    assert dataset.classes == ["run"] and dataset.samples[0]["label"] == 0


def test_collate_rejects_mixed_shapes():
    items = [dict(inputs=torch.zeros(1, 3, 4, 8, 8), label=0), dict(inputs=torch.zeros(1, 3, 4, 8, 9), label=1)]
    with pytest.raises(ValueError, match="different input shapes"):
        collate(items)
