"""Detection: torchvision checkpoint compatibility, COCO data (and bad data), COCO AP, train/resume/test/predict."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lateral
from lateral.cli.detect import add_cli
from lateral.config import ConfigError
from lateral.data.coco import CocoDetection, CocoFormatError, RandomFlip, Resize, collate_detection, hflip_boxes
from lateral.data.shapes import ensure_shapes_dataset, render_shapes
from lateral.engine.detection import (
    coco_evaluate,
    detect_dataset,
    train_detector,
)

SHAPES_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "detection" / "faster_rcnn_r50_fpn_shapes.py"


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def write_coco(tmp_path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def png(path: Path, width: int = 40, height: int = 30) -> None:
    Image.new("RGB", (width, height), (120, 30, 200)).save(path)


# ------------------------------------------------------------------------------------ torchvision compatibility


@pytest.mark.slow
def test_torchvision_fasterrcnn_resnet50_fpn_state_dict_loads_strictly_and_predicts_the_same():
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    # the architecture of torchvision's released fasterrcnn_resnet50_fpn weights (frozen BN, 91 classes)
    reference = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet50", weights=None), 91, min_size=96, max_size=128)
    model = lateral.build_model(
        dict(type="FasterRCNN", backbone=dict(type="ResNetFPN", depth=50), num_classes=91, min_size=96, max_size=128)
    )
    assert list(model.state_dict()) == list(reference.state_dict())
    lateral.load_checkpoint(model, reference.state_dict(), strict=True)
    for detector in (reference, model):
        detector.eval().roi_heads.score_thresh = 0.0  # random weights: keep every box to compare
    images = [torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(3))]
    with torch.no_grad():
        expected, got = reference(images)[0], model(images)[0]
    assert len(got["boxes"]) > 0
    torch.testing.assert_close(got["boxes"], expected["boxes"])
    torch.testing.assert_close(got["scores"], expected["scores"])
    assert torch.equal(got["labels"], expected["labels"])


# ----------------------------------------------------------------------------------------- data and bad data


def test_shapes_dataset_is_reproducible_real_coco(tmp_path):
    first = render_shapes(tmp_path / "a", num_images=4, image_size=48, seed=7)
    second = render_shapes(tmp_path / "b", num_images=4, image_size=48, seed=7)
    other = render_shapes(tmp_path / "c", num_images=4, image_size=48, seed=8)
    assert first.read_text() == second.read_text() != other.read_text()
    assert (tmp_path / "a/images/000003.png").read_bytes() == (tmp_path / "b/images/000003.png").read_bytes()
    dataset = CocoDetection(first, tmp_path / "a" / "images")
    assert len(dataset) == 4 and dataset.classes == ["circle", "square", "triangle"]
    item = dataset[0]
    assert item["image"].shape == (3, 48, 48) and len(item["boxes"]) >= 1
    # ensure_* reuses a matching dataset and re-renders a different one
    stamp = first.stat().st_mtime_ns
    assert ensure_shapes_dataset(tmp_path / "a", num_images=4, image_size=48, seed=7).stat().st_mtime_ns == stamp
    ensure_shapes_dataset(tmp_path / "a", num_images=5, image_size=48, seed=7)
    assert len(json.loads(first.read_text())["images"]) == 5


def test_missing_and_corrupt_images_are_skipped_and_counted(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 30} for i in (1, 2, 3)]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 10, 10]} for i in (1, 2, 3)]
    ann_file = write_coco(tmp_path, images, annotations, [{"id": 1, "name": "thing"}])
    png(tmp_path / "images" / "1.png")
    (tmp_path / "images" / "2.png").write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="1 of 3 images are missing"):
        dataset = CocoDetection(ann_file, tmp_path / "images")
    assert dataset.missing_images == ["3.png"] and len(dataset) == 2
    items, dropped = collate_detection([dataset[0], dataset[1]])
    assert dropped == 1 and [item["image_id"] for item in items] == [1]
    assert dataset.unreadable_images == ["2.png"]

    messages: list[str] = []
    model = lateral.build_model(_tiny_model_cfg(num_classes=2))
    _, image_ids = detect_dataset(model, dataset, batch_size=2, log=messages.append)
    assert image_ids == [1]
    assert any("skipped 2 missing or unreadable" in m for m in messages)


def test_boxes_outside_the_image_are_clipped_and_empty_ones_dropped(tmp_path):
    images = [{"id": 1, "file_name": "1.png", "width": 40, "height": 30}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 20]},  # reaches outside: clipped
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10]},  # zero width: dropped
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [50, 40, 10, 10]},  # wholly outside: dropped
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5]},  # fine
    ]
    ann_file = write_coco(tmp_path, images, annotations, [{"id": 1, "name": "thing"}])
    png(tmp_path / "images" / "1.png")
    with pytest.warns(UserWarning, match="2 boxes .* clipped; 2 boxes had zero area"):
        dataset = CocoDetection(ann_file, tmp_path / "images")
    assert dataset[0]["boxes"].tolist() == [[30.0, 20.0, 40.0, 30.0], [2.0, 3.0, 6.0, 8.0]]
    assert dataset.clipped_boxes == 2 and dataset.dropped_boxes == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2, 3]", "got a list"),
        (json.dumps({"images": [], "annotations": []}), "'categories' missing"),
        (json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}), "images\\[0\\] needs"),
        (
            json.dumps(
                {"images": [], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2]}], "categories": []}
            ),
            "must be \\[x, y, width, height\\]",
        ),
    ],
)
def test_an_annotation_file_that_is_not_coco_gives_a_clear_error(tmp_path, content, message):
    (tmp_path / "images").mkdir()
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(content)
    with pytest.raises(CocoFormatError, match=message):
        CocoDetection(ann_file, tmp_path / "images")


def test_non_contiguous_category_ids_are_mapped_and_mapped_back(tmp_path):
    categories = [{"id": 20, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    images = [{"id": 5, "file_name": "a.png", "width": 40, "height": 30}]
    annotations = [
        {"id": 1, "image_id": 5, "category_id": 20, "bbox": [1, 1, 10, 10]},
        {"id": 2, "image_id": 5, "category_id": 3, "bbox": [2, 2, 10, 10]},
        {"id": 3, "image_id": 5, "category_id": 7, "bbox": [3, 3, 10, 10]},
    ]
    ann_file = write_coco(tmp_path, images, annotations, categories)
    png(tmp_path / "images" / "a.png")
    dataset = CocoDetection(ann_file, tmp_path / "images")
    assert dataset.cat_ids == [3, 7, 20] and dataset.classes == ["cat", "dog", "zebra"]
    assert dataset.num_classes == 4
    assert dataset[0]["labels"].tolist() == [3, 1, 2]
    gt = dataset.coco_ground_truth()
    assert sorted(a["category_id"] for a in gt["annotations"]) == [3, 7, 20]
    # torchvision's COCO convention: the label is the category id itself
    as_ids = CocoDetection(ann_file, tmp_path / "images", category_ids_as_labels=True)
    assert as_ids.num_classes == 21 and as_ids[0]["labels"].tolist() == [20, 3, 7]
    assert as_ids.classes[2] == "cat" and as_ids.classes[0] == "N/A"
    assert [c["id"] for c in as_ids.coco_ground_truth()["categories"]] == [3, 7, 20]


def test_resize_and_flip_transform_image_and_boxes_together():
    image = torch.zeros(3, 20, 40)
    image[:, 2:6, 4:10] = 1.0
    results = {"image": image, "boxes": torch.tensor([[4.0, 2.0, 10.0, 6.0]]), "scale_factor": (1.0, 1.0)}
    results = Resize(scale=(40, 100))(results)
    assert results["image"].shape == (3, 40, 80) and results["scale_factor"] == (2.0, 2.0)
    assert results["boxes"].tolist() == [[8.0, 4.0, 20.0, 12.0]]
    flipped = RandomFlip(flip_ratio=1.0)(dict(results))
    assert flipped["flip"] and flipped["boxes"].tolist() == [[60.0, 4.0, 72.0, 12.0]]
    # the box still frames the bright patch after the flip
    assert flipped["image"][0, 4:12, 60:72].min() > 0.5 and flipped["image"][0, 4:12, 8:20].max() < 0.5
    boxes = torch.tensor([[1.0, 2.0, 5.0, 9.0]])
    assert torch.equal(hflip_boxes(hflip_boxes(boxes, 30), 30), boxes)
    random.seed(0)
    jittered = Resize(scale=(40, 100), ratio_range=(0.5, 0.75))({"image": image, "boxes": torch.zeros(0, 4)})
    assert 20 <= jittered["image"].shape[1] <= 30


# ------------------------------------------------------------------------------------------------ evaluation


def _ground_truth() -> dict:
    generator = torch.Generator().manual_seed(0)
    images, annotations = [], []
    for image_id in range(1, 9):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 200, "height": 200})
        for _ in range(3):
            x, y = (torch.rand(2, generator=generator) * 120).tolist()
            w, h = (torch.rand(2, generator=generator) * 60 + 20).tolist()
            category = int(torch.randint(1, 3, (1,), generator=generator))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category * 5, "bbox": [x, y, w, h]}
            )
    categories = [{"id": 5, "name": "a"}, {"id": 10, "name": "b"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_coco_ap_is_one_for_perfect_predictions_and_low_for_shuffled_ones():
    gt = _ground_truth()
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]
    metrics = coco_evaluate(gt, perfect)
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    # same boxes, each moved to another image: almost nothing matches
    shuffled = [dict(d, image_id=d["image_id"] % 8 + 1) for d in perfect]
    assert coco_evaluate(gt, shuffled)["AP"] < 0.1
    assert coco_evaluate(gt, [])["AP"] == 0.0


def test_metrics_without_objects_of_a_size_say_so_and_are_null_in_json(monkeypatch):
    from lateral.engine import detection

    gt = _ground_truth()  # boxes of 20-80 pixels a side: small and medium objects, no large ones (> 96^2 pixels)
    assert not any(a["bbox"][2] * a["bbox"][3] > 96**2 for a in gt["annotations"])
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]
    metrics = coco_evaluate(gt, perfect)
    assert metrics["APl"] is None and metrics["APm"] == pytest.approx(1.0)
    assert json.loads(json.dumps(metrics))["APl"] is None  # null in --out and work_dir/metrics.json, not -1
    nothing_found = coco_evaluate(gt, [])
    assert nothing_found["APl"] is None and nothing_found["AP"] == 0.0 and nothing_found["APm"] == 0.0

    class Dataset:
        def coco_ground_truth(self):
            return gt

    monkeypatch.setattr(detection, "detect_dataset", lambda *args: (perfect, [i["id"] for i in gt["images"]]))
    lines = []
    detection.evaluate_detector(None, Dataset(), log=lines.append)
    assert "APl n/a (no large objects in the ground truth)" in lines[-1] and "-1" not in lines[-1]
    assert "AP50 1.000" in lines[-1]
    no_objects = dict(gt, annotations=[])
    assert "AP n/a (no objects in the ground truth)" in detection.format_metrics(coco_evaluate(no_objects, perfect))


def test_the_shapes_schedule_warms_up_from_a_tenth_and_steps_by_iteration():
    from lateral.engine.optim import build_lr_factor

    cfg = lateral.load_config(SHAPES_CONFIG)
    max_iters = cfg["train_cfg"]["max_iters"]
    # iters_per_epoch and the length in epochs do not matter to by_epoch=False entries
    factor = build_lr_factor(cfg["param_scheduler"], 7, max_iters / 7, 0.01)
    assert factor(0) == pytest.approx(0.1) and factor(25) == pytest.approx(0.55) and factor(50) == pytest.approx(1.0)
    assert factor(159) == pytest.approx(1.0) and factor(160) == pytest.approx(0.1) and factor(199) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------ train / test / predict


def _tiny_model_cfg(num_classes: int = 4) -> dict:
    return dict(
        type="FasterRCNN",
        backbone=dict(type="ResNetFPN", depth=18, out_channels=32, body_norm="BN", trainable_layers=5),
        num_classes=num_classes,
        min_size=None,
        anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
        rpn_pre_nms_top_n_train=100,
        rpn_post_nms_top_n_train=50,
        rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=20,
        box_batch_size_per_image=16,
        representation_size=32,
    )


def _tiny_config(tmp_path: Path) -> Path:
    """The shipped shapes config, shrunk: a tiny model, 6 images of 48 pixels, 3 iterations."""
    cfg = tmp_path / "tiny.py"
    root = tmp_path / "shapes"
    cfg.write_text(
        f"_base_ = {str(SHAPES_CONFIG)!r}\n"
        f"model = dict(_delete_=True, **{_tiny_model_cfg()!r})\n"
        f"train_dataloader = dict(batch_size=2, dataset=dict(data_root='{root}/train',\n"
        f"    synthetic=dict(_delete_=True, num_images=6, image_size=48, seed=0),\n"
        f"    pipeline=[dict(type='Resize', scale=(48, 48)), dict(type='RandomFlip')]))\n"
        f"val_dataloader = dict(batch_size=2, dataset=dict(data_root='{root}/val',\n"
        f"    synthetic=dict(_delete_=True, num_images=2, image_size=48, seed=1),\n"
        f"    pipeline=[dict(type='Resize', scale=(48, 48))]))\n"
        f"test_dataloader = None\n"
        f"param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]\n"
        f"train_cfg = dict(max_iters=3, val_interval=3)\n"
        f"default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))\n"
        f"work_dir = '{tmp_path / 'work'}'\n"
    )
    return cfg


@pytest.mark.slow
def test_train_resume_test_and_predict_end_to_end(tmp_path, capsys):
    config = _tiny_config(tmp_path)
    assert run_cli(["detect", "train", str(config), "--cfg-options", "train_cfg.max_iters=2"]) == 0
    checkpoint = tmp_path / "work" / "latest.pth"
    first = torch.load(checkpoint, weights_only=True)
    assert first["meta"]["iter"] == 2 and first["meta"]["classes"] == ["circle", "square", "triangle"]
    assert sorted(p.name for p in (tmp_path / "work").glob("*.pth")) == ["best.pth", "iter_2.pth", "latest.pth"]
    out = capsys.readouterr().out
    assert "iter 2/2 loss" in out and "AP50" in out

    assert run_cli(["detect", "train", str(config), "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "resumed at iteration 2" in out and "iter 3/3" in out and "iter 1/3" not in out
    second = torch.load(checkpoint, weights_only=True)
    assert second["meta"]["iter"] == 3
    events = [json.loads(line)["event"] for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    assert events.count("resume") == 1 and events.count("val") == 2 and "train" in events
    changed = [k for k in first["state_dict"] if not torch.equal(first["state_dict"][k], second["state_dict"][k])]
    assert changed  # the resumed iteration really trained

    assert run_cli(["detect", "test", str(config), str(checkpoint), "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert "AP75" in capsys.readouterr().out

    image = tmp_path / "shapes" / "val" / "images" / "000000.png"
    assert (
        run_cli(
            [
                "detect",
                "predict",
                str(config),
                str(checkpoint),
                str(image),
                "--out",
                str(tmp_path / "out"),
                "--score-thr",
                "0",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "out" / "000000.json").read_text())
    assert record["width"] == 48 and isinstance(record["detections"], list)
    for detection in record["detections"]:
        assert detection["class"] in ("circle", "square", "triangle") and len(detection["box"]) == 4
    assert Image.open(tmp_path / "out" / "000000.png").size == (48, 48)


def _drawn(box: list[float], caption_class: str = "square", class_id: int = 2, width: int = 120, height: int = 60):
    """(pixels [H, W, 3] of one box drawn on grey, its colour, how many caption pixels (near white: >= 200 in every
    channel, which neither the grey nor a palette colour is) a box in the open has)."""
    from lateral.engine.detection import _PALETTE, draw_detections

    grey = torch.full((3, height, width), 0.5)
    score = torch.tensor([0.81])
    pixels = np.asarray(draw_detections(grey, torch.tensor([box]), [caption_class], score, [class_id]))
    in_the_open = np.asarray(
        draw_detections(grey, torch.tensor([[20.0, 30.0, 100.0, 55.0]]), [caption_class], score, [class_id])
    )
    return pixels, np.array(_PALETTE[class_id % len(_PALETTE)]), int((in_the_open >= 200).all(axis=2).sum())


def test_a_caption_without_room_above_its_box_goes_inside_it_and_is_never_cut_off():
    # a box 6 pixels below the top edge: the 12-pixel caption does not fit above it
    pixels, colour, full_caption = _drawn([10.0, 6.0, 90.0, 50.0])
    rows = np.flatnonzero((pixels == colour).all(axis=2).any(axis=1))
    assert rows.min() == 6  # the caption's rectangle starts at the box's top edge, nothing above the box
    assert full_caption > 30 and (pixels >= 200).all(axis=2).sum() == full_caption  # the whole caption is drawn
    # a box touching the top and right edges: the caption goes inside, moved left, whole
    pixels, colour, full_caption = _drawn([95.0, 0.0, 119.0, 40.0])
    assert (pixels >= 200).all(axis=2).sum() == full_caption
    # with room above, the caption sits on the box, above its top edge, as before
    pixels, colour, _ = _drawn([10.0, 30.0, 90.0, 55.0])
    rows = np.flatnonzero((pixels == colour).all(axis=2).any(axis=1))
    assert 30 - 16 <= rows.min() < 30


def test_resume_of_a_missing_checkpoint_and_bad_model_class_count(tmp_path):
    config = _tiny_config(tmp_path)
    cfg = lateral.load_config(config)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        train_detector(cfg, resume=str(tmp_path / "nope.pth"), evaluate=False)
    cfg["model"]["num_classes"] = 7
    with pytest.raises(ConfigError, match="num_classes is 7 but the dataset has 3 categories"):
        train_detector(cfg)


def test_a_recognition_config_is_refused_by_the_detect_commands(tmp_path):
    cfg = lateral.load_config(SHAPES_CONFIG)
    cfg["model"] = dict(type="Recognizer3D", backbone=dict(type="ResNet3dSlowOnly"), cls_head=dict(type="I3DHead"))
    with pytest.raises(ConfigError, match="model is a Recognizer3D, not a detector"):
        train_detector(cfg, work_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "section, key, message",
    [
        ("train_cfg", "max_iter", "train_cfg: unknown key 'max_iter'. Did you mean 'max_iters'"),
        ("default_hooks", "checkpiont", "default_hooks: unknown key 'checkpiont'. Did you mean 'checkpoint'"),
        ("train_dataloader", "batch_sise", "train_dataloader: unknown key 'batch_sise'. Did you mean 'batch_size'"),
        ("val_evaluator", "metrik", "val_evaluator: unknown key 'metrik'. Did you mean 'metric'"),
    ],
)
def test_misspelt_detection_keys_stop_before_any_work(tmp_path, section, key, message):
    cfg = lateral.load_config(SHAPES_CONFIG)
    cfg.setdefault(section, {})[key] = 2
    with pytest.raises(ConfigError, match=message):
        train_detector(cfg, work_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_an_old_style_detection_config_is_refused_with_what_to_rename(tmp_path):
    old = tmp_path / "old.py"
    old.write_text(
        "model = dict(type='FasterRCNN', backbone=dict(type='ResNetFPN', depth=18), num_classes=4)\n"
        "data = dict(train=dict(ann_file='a.json', img_dir='images'), batch_size=2)\n"
        "optimizer = dict(lr=0.01, grad_clip=10.0)\n"
        "schedule = dict(max_iters=100, warmup_iters=10, milestones=(80,))\n"
        "seed = 0\n"
    )
    cfg = lateral.load_config(old)
    with pytest.raises(ConfigError) as info:
        train_detector(cfg, work_dir=tmp_path / "never")
    message = str(info.value)
    assert "old top-level keys data, optimizer, schedule, seed" in message
    for advice in (
        "data.train / data.val / data.test -> train_dataloader / val_dataloader / test_dataloader",
        "data_prefix=dict(img=<img_dir>)",
        "optim_wrapper=dict(optimizer=dict(type='SGD', lr=..., momentum=..., weight_decay=...), "
        "clip_grad=dict(max_norm=<grad_clip>))",
        "schedule.max_iters -> train_cfg=dict(type='IterBasedTrainLoop', max_iters=...",
        "dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=<warmup_iters>)",
        "schedule.checkpoint_interval -> default_hooks.checkpoint=dict(interval=..., by_epoch=False)",
        "seed -> randomness=dict(seed=...)",
    ):
        assert advice in message, advice
    assert not (tmp_path / "never").exists()
    # the test and predict commands read the same configs and refuse them the same way
    with pytest.raises(ConfigError, match="old top-level keys data, optimizer, schedule, seed"):
        run_cli(["detect", "test", str(old), str(tmp_path / "x.pth")])


@pytest.mark.slow
def test_detection_resume_auto_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
    from checkpoint_damage import zero_tensor_bytes

    cfg = lateral.load_config(_tiny_config(tmp_path))
    cfg["default_hooks"]["checkpoint"]["interval"] = 1
    cfg["train_cfg"]["max_iters"] = 2
    lines = []
    train_detector(cfg, resume="auto", log=lines.append, evaluate=False)
    assert sorted(p.name for p in (tmp_path / "work").glob("*.pth")) == ["iter_1.pth", "iter_2.pth", "latest.pth"]
    member = zero_tensor_bytes(tmp_path / "work" / "latest.pth")  # iter_2.pth is the same file: both damaged
    cfg["train_cfg"]["max_iters"] = 3
    with caplog.at_level("WARNING", logger="lateral.train"):
        result = train_detector(cfg, resume="auto", log=lines.append, evaluate=False)
    assert "resuming from iter_1.pth, because" in caplog.text and f"its member '{member}'" in caplog.text
    assert "iter_2.pth is the same file as latest.pth (a hard link)" in caplog.text
    assert "resumed at iteration 1 (epoch 0)" in lines and result["iterations"] == 3
    assert torch.load(tmp_path / "work" / "latest.pth", weights_only=True)["meta"]["iter"] == 3


def test_score_threshold_outside_zero_one_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--score-thr is a detection score between 0 and 1, got 5.0"):
        run_cli(
            [
                "detect",
                "predict",
                str(SHAPES_CONFIG),
                str(tmp_path / "x.pth"),
                str(tmp_path / "a.png"),
                "--score-thr",
                "5",
                "--out",
                str(tmp_path / "out"),
            ]
        )
