"""From files to a ready model: a run config from a config file or a checkpoint's ``meta``, a recognizer filled
from its checkpoint (optionally as the fused inference copy), and the class names to print."""

from __future__ import annotations

from pathlib import Path

import torch

from lateral.checkpoint import load_checkpoint, read_checkpoint
from lateral.config import ConfigError, apply_cfg_options, load_config
from lateral.convert import config_from_meta
from lateral.data.datasets import load_label_map
from lateral.engine.distributed import resolve_device
from lateral.inference import optimize
from lateral.registry import build_model

__all__ = [
    "load_run_config",
    "config_from_checkpoint",
    "run_config_from_converted_meta",
    "read_label_names",
    "load_model",
]


def load_run_config(path: str, cfg_options: list[str] | None = None) -> dict:
    """A config file (``.py``), or a checkpoint whose ``meta`` carries its config, with overrides applied."""
    if path.endswith(".py"):
        cfg = load_config(path)
    else:
        cfg = config_from_checkpoint(path)
    if cfg_options:
        cfg = apply_cfg_options(cfg, cfg_options)
    return cfg


def config_from_checkpoint(path: str) -> dict:
    """The run config stored in a checkpoint's ``meta`` (lateral training runs and converted checkpoints)."""
    meta = read_checkpoint(path).get("meta") or {}
    config = meta.get("config")
    if isinstance(config, dict) and "model" in config:
        return config
    if isinstance(config, dict) and "sampling" in meta:
        return run_config_from_converted_meta(meta)
    raise ConfigError(f"{path} carries no config in its meta; pass the config file too: CONFIG CKPT VIDEO")


def run_config_from_converted_meta(meta: dict) -> dict:
    """A run config (model + test pipeline) for a checkpoint written by ``lateral convert``.

    The source ecosystem's normalisation (0-1 values, mean 0.45, std 0.225 for PyTorchVideo / PySlowFast) is
    expressed on the 0-255 scale the data preprocessor works on, and its frame sampling becomes the test pipeline.
    """
    model = config_from_meta(meta)
    norm = meta.get("normalization") or {}
    scale = 255.0 if list(norm.get("value_range", [0.0, 255.0]))[-1] <= 1.0 else 1.0
    model["data_preprocessor"] = dict(
        type="ActionDataPreprocessor",
        mean=[m * scale for m in norm.get("mean", [0.45, 0.45, 0.45])],
        std=[s * scale for s in norm.get("std", [0.225, 0.225, 0.225])],
        format_shape="NCTHW",
    )
    sampling = meta["sampling"]
    crop_type = {1: "CenterCrop", 3: "ThreeCrop", 10: "TenCrop"}.get(int(sampling.get("num_crops", 1)), "CenterCrop")
    test_pipeline = [
        dict(type="PyAVInit"),
        dict(
            type="SampleFrames",
            clip_len=sampling["clip_len"],
            frame_interval=sampling["frame_interval"],
            num_clips=sampling.get("num_clips", 1),
            test_mode=True,
        ),
        dict(type="PyAVDecode"),
        dict(type="Resize", scale=(-1, sampling.get("test_scale", 256))),
        dict(type=crop_type, crop_size=sampling.get("crop_size", 256)),
        dict(type="FormatShape", input_format="NCTHW"),
        dict(type="PackActionInputs"),
    ]
    return {"model": model, "test_pipeline": test_pipeline}


def read_label_names(path: str | None, cfg: dict, num_classes: int) -> list[str]:
    """Class names from ``--labels``, the config's ``label_map`` file or list, else indices; a file in any layout
    :func:`lateral.data.datasets.load_label_map` reads (a name per line, ``index name`` lines, an ``id,name`` CSV)."""
    source = path or cfg.get("label_map")
    if isinstance(source, (list, tuple)):
        names = [str(n) for n in source]
    elif source:
        if not Path(source).is_file():
            raise FileNotFoundError(f"label map not found: {source}")
        names = load_label_map(source)
    else:
        return [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"the label map has {len(names)} names but the model has {num_classes} classes")
    return names


def load_model(
    cfg: dict,
    checkpoint: str,
    device: str | None = None,
    eager: bool = False,
    precision: str = "fp32",
    compile: bool = False,
    backend: str = "torch",
    on_unsupported: str = "error",
) -> tuple[torch.nn.Module, torch.device]:
    """The config's recognizer filled from ``checkpoint`` ('none': random weights) on ``device`` in eval mode: the
    model as built with ``eager``, else the inference copy of :func:`lateral.optimize` for ``precision``,
    ``compile`` and ``backend`` (``on_unsupported``: what to do where the CPU has no bf16)."""
    model = build_model(cfg["model"])
    if checkpoint.lower() != "none":
        load_checkpoint(model, checkpoint, strict=True)
    target = resolve_device(device)
    model.to(target).eval()
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"--precision must be fp32 or bf16, got '{precision}'")
    if eager:
        if compile or precision != "fp32" or backend != "torch":
            raise ConfigError(
                "--eager runs the model as built, in fp32; it cannot be combined with --compile, "
                "--precision bf16 or --backend openvino"
            )
        return model, target
    if compile and backend != "torch":
        raise ConfigError("--compile is for --backend torch; OpenVINO compiles the model itself")
    # the inference copy (BN folded, channels-last, oneDNN convs) gives the eager logits within 1e-4, faster
    model = optimize(model, precision=precision, compile=compile, on_unsupported=on_unsupported, backend=backend)
    return model, target
