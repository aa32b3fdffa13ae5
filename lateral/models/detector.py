"""Faster R-CNN from a config: a :class:`~lateral.models.fpn.ResNetFPN` backbone with torchvision's RPN and RoI heads.

The model returned is ``torchvision.models.detection.FasterRCNN`` itself, so its state-dict names are torchvision's
(``backbone.body.*``, ``backbone.fpn.*``, ``rpn.head.*``, ``roi_heads.box_head.*``, ``roi_heads.box_predictor.*``)
and a ``fasterrcnn_resnet50_fpn`` checkpoint loads into ``build_faster_rcnn(backbone=dict(type='ResNetFPN',
depth=50), num_classes=91)`` with ``strict=True``. Only the box RoI pooling is ours (:class:`MultiScaleRoIPool`,
levels from the backbone's strides); it has no parameters, so checkpoints are unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from lateral.config import ConfigError
from lateral.models.roi import MultiScaleRoIPool
from lateral.registry import build_model

if TYPE_CHECKING:
    from lateral.models.resnet import FeatureSpec

__all__ = ["build_faster_rcnn", "PipelineResizedTransform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PipelineResizedTransform(GeneralizedRCNNTransform):
    """torchvision's detection input transform without its resize: normalise and pad-batch only.

    Used when the data pipeline has already resized every image (``min_size=None`` in the config), so that a
    random resize there is not undone by a second resize to a fixed short side inside the model.
    """

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        return image, target


def build_faster_rcnn(
    backbone: dict | nn.Module,
    num_classes: int = 91,
    min_size: int | None = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    anchor_sizes: Sequence[Sequence[int]] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
    roi_output_size: int = 7,
    sampling_ratio: int = 2,
    representation_size: int = 1024,
) -> FasterRCNN:
    """Build a torchvision ``FasterRCNN`` around a pyramid backbone.

    Args:
        backbone: a ``ResNetFPN`` config dict (built through :func:`lateral.build_model`) or a module with
            ``out_channels`` and ``feature_info`` / ``pyramid_info`` (name, channels, stride per output).
        num_classes: object classes + 1 for background (91 for torchvision's COCO models).
        min_size: short side the model resizes every image to; None leaves resizing to the data pipeline.
        max_size: cap on the long side when ``min_size`` is set.
        image_mean: per-channel mean subtracted from [0, 1] RGB input.
        image_std: per-channel std dividing it.
        anchor_sizes: one tuple of anchor sizes (pixels) per backbone output; default 8 x stride of each output
            (32, 64, 128, 256, 512 for P2..P6, torchvision's).
        aspect_ratios: anchor height/width ratios, the same at every level.
        rpn_pre_nms_top_n_train: proposals kept per level before NMS in training.
        rpn_pre_nms_top_n_test: the same at test time.
        rpn_post_nms_top_n_train: proposals kept after NMS in training.
        rpn_post_nms_top_n_test: the same at test time.
        rpn_batch_size_per_image: anchors sampled per image for the RPN loss.
        box_batch_size_per_image: proposals sampled per image for the box-head loss.
        box_score_thresh: detections below this score are dropped at test time.
        box_nms_thresh: per-class NMS IoU at test time.
        box_detections_per_img: detections kept per image.
        roi_output_size: RoIAlign output side of the box head (7).
        sampling_ratio: RoIAlign sampling points per bin side.
        representation_size: width of the box head's two fully connected layers (torchvision: 1024).

    Returns:
        ``torchvision.models.detection.FasterRCNN``; ``model(images)`` in eval mode gives a list of
        ``{'boxes': [K, 4], 'labels': [K], 'scores': [K]}`` in the input images' pixels.
    """
    backbone = _pyramid_backbone(backbone)
    if num_classes < 2:
        raise ConfigError(f"num_classes counts the background too and must be >= 2, got {num_classes}")
    # the backbone's feature contract, checked above (nn.Module types attributes as Tensor | Module)
    outputs = cast("list[FeatureSpec]", backbone.feature_info)
    out_channels = cast(int, backbone.out_channels)
    anchor_generator = _anchor_generator(outputs, anchor_sizes, aspect_ratios)
    pyramid = getattr(backbone, "pyramid_info", outputs)
    box_roi_pool = MultiScaleRoIPool(
        [spec.name for spec in pyramid], [spec.stride for spec in pyramid], roi_output_size, sampling_ratio
    )
    box_head = TwoMLPHead(out_channels * roi_output_size**2, representation_size)
    model = FasterRCNN(
        backbone,
        num_classes=None,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        min_size=min_size if min_size is not None else 1,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchor_generator,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        box_detections_per_img=box_detections_per_img,
    )
    # FasterRCNN type-checks box_roi_pool against its own class; RoIHeads only calls it, so swap it in after
    model.roi_heads.box_roi_pool = box_roi_pool
    if min_size is None:
        model.transform = PipelineResizedTransform(1, max_size, list(image_mean), list(image_std))
    return model


def _pyramid_backbone(backbone: dict | nn.Module) -> nn.Module:
    """``backbone`` built from its config dict if need be, checked to carry the feature contract Faster R-CNN
    reads (``out_channels``, ``feature_info``)."""
    if isinstance(backbone, dict):
        backbone = build_model(backbone)
    has_contract = hasattr(backbone, "out_channels") and hasattr(backbone, "feature_info")
    if not isinstance(backbone, nn.Module) or not has_contract:
        raise ConfigError(
            f"the Faster R-CNN backbone must be a module with 'out_channels' and 'feature_info' (e.g. ResNetFPN), "
            f"got {type(backbone).__name__}"
        )
    return backbone


def _anchor_generator(
    outputs: list[FeatureSpec], anchor_sizes: Sequence[Sequence[int]] | None, aspect_ratios: Sequence[float]
) -> AnchorGenerator:
    """Anchors of ``anchor_sizes`` (default 8 x each output's stride) and ``aspect_ratios`` on every output map."""
    if anchor_sizes is None:
        anchor_sizes = [(8 * spec.stride,) for spec in outputs]
    sizes = tuple(tuple(int(s) for s in per_map) for per_map in anchor_sizes)
    if len(sizes) != len(outputs):
        raise ConfigError(
            f"anchor_sizes has {len(sizes)} entries but the backbone returns {len(outputs)} maps "
            f"({', '.join(spec.name for spec in outputs)}): give one tuple of sizes per map"
        )
    return AnchorGenerator(sizes, (tuple(float(r) for r in aspect_ratios),) * len(sizes))
