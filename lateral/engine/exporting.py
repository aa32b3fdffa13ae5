"""What ``lateral export`` and ``lateral bench`` run on: the model of a config and checkpoint, the part of it that
exports, and the example input its test pipeline implies.

The work is in :mod:`lateral.inference`; the commands are in :mod:`lateral.cli.export`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lateral.config import ConfigError
from lateral.engine.loading import load_model, load_run_config
from lateral.engine.predict import video_pipeline
from lateral.inference.timing import parse_input_shape

__all__ = [
    "build_from_files",
    "config_test_clips",
    "default_input",
    "example_input",
    "exportable_module",
    "default_input_shape",
    "config_clip_len",
    "config_input_shape",
    "CHECK_ATOL",
    "CHECK_RTOL",
]

# parity bound of ``export --check``: |exported - eager| <= ATOL + RTOL * max|eager|
CHECK_ATOL, CHECK_RTOL = 1e-4, 1e-4


def exportable_module(model: nn.Module) -> tuple[nn.Module, str]:
    """The part of a built config that exports: a recognizer or a bare backbone as is, a detector's backbone.

    Returns:
        (module, note) where note says what was picked when it is not the whole model.
    """
    if getattr(model, "feature_extraction", False):
        return model, (
            "test_cfg.feature_extraction applies to predict only: the exported model is the forward pass, "
            "[N, C, T, H, W] -> class scores [N, K]"
        )
    backbone = getattr(model, "backbone", None)
    if hasattr(model, "cls_head") or not isinstance(backbone, nn.Module):
        return model, ""
    return backbone, f"exporting the backbone of {type(model).__name__} (its detection heads are not exported)"


def config_clip_len(cfg: dict) -> int | None:
    """Frames per clip the config feeds its model: a top-level ``clip_len``, else that of the test (or val)
    pipeline's frame sampler; None if neither says."""

    if "clip_len" in cfg:
        return int(cfg["clip_len"])
    try:
        pipeline = video_pipeline(cfg)
    except ConfigError:
        return None
    for step in pipeline:
        if isinstance(step, dict) and "clip_len" in step:
            return int(step["clip_len"])
    return None


def config_input_shape(cfg: dict) -> tuple[int, ...] | None:
    """The config's own ``input_shape`` (``[N, C, T, H, W]`` or ``[N, C, H, W]``), checked; None if it has none."""
    shape = cfg.get("input_shape")
    if shape is None:
        return None
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) not in (4, 5)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
    ):
        raise ConfigError(
            f"input_shape must be 4 or 5 positive whole numbers ([N, C, T, H, W] or [N, C, H, W]), got {shape!r}"
        )
    return tuple(shape)


# crops a test-time crop step takes of each clip
_CROPS_PER_STEP = {"CenterCrop": 1, "ThreeCrop": 3, "TenCrop": 10}
_SAMPLERS = ("SampleFrames", "DenseSampleFrames", "UniformSample")


@dataclass(frozen=True)
class PipelineClips:
    """What a config's test pipeline feeds its model for one video: ``num_clips x num_crops`` views of
    ``clip_len`` frames of ``height x width`` (None where the pipeline does not say)."""

    clip_len: int | None
    height: int | None
    width: int | None
    num_clips: int = 1
    num_crops: int = 1

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops


def config_test_clips(cfg: dict) -> PipelineClips:
    """The clip length, frame size and views of the config's test (or val) pipeline: the size of its last crop
    (``CenterCrop``/``ThreeCrop``/``TenCrop``) or fixed-size ``Resize(keep_ratio=False)``, the ``num_clips`` of its
    frame sampler and the crops of its crop step."""

    try:
        pipeline = [step for step in video_pipeline(cfg) if isinstance(step, dict)]
    except ConfigError:
        pipeline = []
    height = width = None
    num_clips = num_crops = 1
    for step in pipeline:
        kind = step.get("type")
        if kind in _SAMPLERS:
            num_clips = int(step.get("num_clips", 1))
        size = None
        if kind in _CROPS_PER_STEP and "crop_size" in step:
            num_crops = _CROPS_PER_STEP[kind]
            size = step["crop_size"]
        elif kind == "Resize" and step.get("keep_ratio", True) is False:
            size = step.get("scale")
        if isinstance(size, int) and not isinstance(size, bool):
            height = width = size
        elif isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
            width, height = size  # mmaction2 sizes are (w, h)
    return PipelineClips(config_clip_len(cfg), height, width, num_clips, num_crops)


def default_input(module: nn.Module, cfg: dict) -> tuple[tuple[int, ...], str]:
    """The example input of ``export`` and ``bench`` without ``--input``, and a line saying where it comes from.

    The config's ``input_shape``; else for a 3D model one video's views of its test pipeline as the batch,
    ``VIEWS x 3 x T x H x W`` (:func:`config_test_clips`; T 32 and 224x224 where the pipeline does not say);
    1x3x800x1216 for a 2D model.
    """
    own = config_input_shape(cfg)
    if own is not None:
        return own, "the config's input_shape"
    if not any(isinstance(m, nn.Conv3d) for m in module.modules()):
        return (1, 3, 800, 1216), "the default for a 2D model"
    clips = config_test_clips(cfg)
    shape = (clips.num_views, 3, clips.clip_len or 32, clips.height or 224, clips.width or 224)
    said = []
    if clips.clip_len is not None:
        said.append(f"clip_len {clips.clip_len}")
    if clips.height is not None:
        said.append(f"{clips.height}x{clips.width} frames")
    if clips.num_views > 1:
        said.append(
            f"{clips.num_clips} clips x {clips.num_crops} crops = {clips.num_views} views of a video as the batch"
        )
    source = f"the config's test pipeline ({', '.join(said)})" if said else "the defaults"
    if said and (clips.clip_len is None or clips.height is None):
        source += ", the rest defaults"
    return shape, source


def default_input_shape(module: nn.Module, cfg: dict) -> tuple[int, ...]:
    """The shape of :func:`default_input`."""
    return default_input(module, cfg)[0]


def build_from_files(config: str, checkpoint: str | None, cfg_options: list[str] | None) -> tuple[nn.Module, dict]:
    """The model of ``config`` (a config file or a checkpoint carrying its config) in eval mode, filled from
    ``checkpoint`` unless that is None or 'none', and the run config."""
    cfg = load_run_config(config, cfg_options)
    if "model" not in cfg:
        raise ConfigError(f"{config} defines no 'model'")
    model, _ = load_model(cfg, checkpoint or "none", device="cpu", eager=True)  # exported and timed on the CPU
    return model, cfg


def example_input(input_shape: str | None, module: nn.Module, cfg: dict) -> torch.Tensor:
    """A seeded random input of ``input_shape`` (``'1x3x32x224x224'``), else of :func:`default_input`'s shape,
    which is printed with where it comes from."""
    if input_shape:
        shape = parse_input_shape(input_shape)
    else:
        shape, source = default_input(module, cfg)
        print(f"input {'x'.join(map(str, shape))} from {source}; --input sets another")
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------------ export


# ------------------------------------------------------------------------------------------------------- bench
