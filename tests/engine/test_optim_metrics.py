"""Optimizer grouping, mmengine-style schedules, metrics and unpadded distributed sharding."""

import math

import numpy as np
import pytest

import lateral
from lateral.config import ConfigError
from lateral.engine.distributed import InferenceSampler
from lateral.engine.metrics import average_precision, classification_metrics, save_confusion, top_k_accuracy
from lateral.engine.optim import build_lr_factor, build_optimizer


def tiny():
    return lateral.build_model(
        dict(
            type="Recognizer3D",
            backbone=dict(type="ResNet3dSlowOnly", depth=18, base_channels=4, frozen_stages=1),
            cls_head=dict(type="I3DHead", in_channels=32, num_classes=3),
        )
    )


def test_norm_and_bias_excluded_from_weight_decay_and_frozen_params_left_out():
    model = tiny()
    opt = build_optimizer(
        model,
        dict(
            optimizer=dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4),
            paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
        ),
    )
    decay = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(decay.values()) == trainable < sum(p.numel() for p in model.parameters())
    bn_and_bias = sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad and (".bn." in n or n.endswith("bias"))
    )
    assert decay[0.0] == bn_and_bias


def test_unknown_optimizer_and_scheduler_are_reported():
    with pytest.raises(ConfigError, match="Did you mean 'Adam'"):
        build_optimizer(tiny(), dict(optimizer=dict(type="AdamX", lr=1e-3)))
    with pytest.raises(ConfigError, match="CosineAnnealingLR"):
        build_lr_factor([dict(type="CosineAnnealing")], 10, 5, 0.1)


def test_linear_warmup_then_cosine_matches_closed_form():
    factor = build_lr_factor(
        [
            dict(type="LinearLR", start_factor=0.1, by_epoch=True, begin=0, end=2),
            dict(type="CosineAnnealingLR", T_max=10, eta_min=0, by_epoch=True, begin=0, end=10),
        ],
        iters_per_epoch=5,
        max_epochs=10,
        base_lr=0.1,
    )
    assert factor(0) == pytest.approx(0.1)
    cos = lambda e: (1 + math.cos(math.pi * e / 10)) / 2  # noqa: E731
    assert factor(5) == pytest.approx((0.1 + 0.9 * 0.5) * cos(1))  # epoch 1: half-way through warm-up
    assert factor(25) == pytest.approx(cos(5))  # warm-up over
    assert factor(50) == pytest.approx(0.0, abs=1e-12)


def test_multistep_schedule():
    factor = build_lr_factor(dict(type="MultiStepLR", milestones=[2, 4], gamma=0.1), 3, 6, 0.1)
    assert [round(factor(i * 3), 6) for i in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]


def test_top_k_mean_class_accuracy_and_confusion(tmp_path):
    scores = np.array([[0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    labels = np.array([0, 1, 1, 2])
    metrics = classification_metrics(scores, labels, topk=(1, 2))
    assert metrics["top1_acc"] == 0.5 and metrics["top2_acc"] == 0.75
    # class 0: 1/1, class 1: 1/2, class 2: 0/1
    assert metrics["mean_class_accuracy"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    json_path, png_path = save_confusion(np.array(metrics["confusion_matrix"]), ["a", "b", "c"], tmp_path)
    assert png_path.stat().st_size > 1000 and '"classes": [' in json_path.read_text()
    assert top_k_accuracy(np.array([[1.0, 1.0]]), np.array([1]), (1,))[1] == 0.0  # ties go to the lower index


def test_unlabelled_samples_are_left_out_and_out_of_range_labels_refused():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    metrics = classification_metrics(scores, np.array([0, -1, 0, -1]))
    # only the two labelled samples count (both right); -1 does not wrap into the last row of the matrix
    assert metrics["top1_acc"] == 1.0 and metrics["num_samples"] == 2 and metrics["num_unlabelled"] == 2
    assert metrics["confusion_matrix"] == [[2, 0], [0, 0]]
    with pytest.raises(ValueError, match=r"labels \[2, 5\] are outside 0..1: the model scores 2 classes"):
        classification_metrics(scores, np.array([0, 2, 5, 1]))


def test_average_precision_matches_the_hand_computed_curve_and_multi_label_reports_map():
    # ranked: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): precision at the positives 1/1 and 2/3
    assert average_precision(np.array([0.7, 0.1, 0.9, 0.8]), np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    # tied scores enter together: one threshold at 0.5 holding 1 positive of 2 -> precision 1/2 at recall 1
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    assert np.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))
    scores = np.array([[0.9, 0.2, 0.1], [0.8, 0.7, 0.3], [0.1, 0.6, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]], dtype=np.float32)  # class 2 has no positive: left out
    metrics = classification_metrics(scores, targets)
    expected = (average_precision(scores[:, 0], targets[:, 0]) + average_precision(scores[:, 1], targets[:, 1])) / 2
    assert metrics == {"mean_average_precision": pytest.approx(expected), "num_samples": 3}
    assert expected == pytest.approx((1.0 + 1.0) / 2)


def test_inference_sampler_shards_cover_every_index_once():
    for size in (0, 1, 7, 10):
        shards = [list(InferenceSampler(size, num_replicas=3, rank_id=r)) for r in range(3)]
        assert sorted(sum(shards, [])) == list(range(size))
