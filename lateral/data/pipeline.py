"""mmaction2 / mmdet-style pipelines: a list of step dicts turned into one callable on a results dict.

``build_pipeline([dict(type='DecordInit'), dict(type='SampleFrames', clip_len=32, ...), ...])`` builds every step
from :data:`PIPELINE_STEPS` with :func:`lateral.registry.build_from_table` (type lookup, key checks) and chains
them. The decoder steps of decord, PyAV and OpenCV all map onto :mod:`lateral.data.decode`, so mmaction2 configs
run unchanged. Detection pipelines (``Resize``, ``RandomFlip`` on a COCO item's ``image`` and ``boxes``) are built
by the same function from the same table.

What the training engine reads from an item: ``inputs`` (``[V, C, T, H, W]`` tensor, uint8, or float32 when the
pipeline normalised) and ``label``. ``PackActionInputs`` (mmaction2 1.x) puts them there; 0.x pipelines ending in
``Collect(keys=['imgs', 'label']) + ToTensor`` get ``inputs`` from :func:`ensure_inputs`, which the datasets apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from lateral.config import ConfigError
from lateral.data.decode import FrameFolderReader, open_video
from lateral.data.sampling import DenseSampleFrames, SampleFrames, UniformSample
from lateral.data.transforms import (
    CenterCrop,
    ColorJitter,
    Flip,
    FormatShape,
    MultiScaleCrop,
    Normalize,
    RandomCrop,
    RandomFlip,
    RandomRescale,
    RandomResizedCrop,
    Resize,
    TenCrop,
    ThreeCrop,
)
from lateral.errors import InputError
from lateral.registry import build_from_table

__all__ = [
    "VideoInit",
    "VideoDecode",
    "DecordInit",
    "DecordDecode",
    "PyAVInit",
    "PyAVDecode",
    "OpenCVInit",
    "OpenCVDecode",
    "RawFrameDecode",
    "PackActionInputs",
    "Collect",
    "ToTensor",
    "Compose",
    "PIPELINE_STEPS",
    "build_pipeline",
    "ensure_inputs",
]


def _default_threads() -> int:
    # inside a DataLoader worker the workers already use the cores; one decoder thread each avoids oversubscribing
    return 1 if torch.utils.data.get_worker_info() is not None else 0


class VideoInit:
    """Open a video and read its frame count and rate without decoding.

    Reads ``filename``. Adds ``video_reader``, ``total_frames`` (counted from the packets, not the header),
    ``avg_fps``.

    Args:
        io_backend: only ``'disk'``.
        num_threads: decoder threads; None: FFmpeg's choice in the main process, 1 in DataLoader workers.
        backend: ``'pyav'`` (default), ``'torchcodec'`` or ``'auto'``.
    """

    def __init__(self, io_backend: str = "disk", num_threads: int | None = None, backend: str = "pyav"):
        if io_backend != "disk":
            raise InputError(f"io_backend '{io_backend}' is not supported; lateral reads videos from disk")
        if backend not in ("pyav", "torchcodec", "auto"):
            raise InputError(f"backend must be 'pyav', 'torchcodec' or 'auto', got '{backend}'")
        self.num_threads = num_threads
        self.backend = backend

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if "filename" not in results:
            raise KeyError(f"{type(self).__name__} needs 'filename' in the results")
        threads = self.num_threads if self.num_threads is not None else _default_threads()
        reader = open_video(results["filename"], backend=self.backend, num_threads=threads)
        results["video_reader"] = reader
        results["total_frames"] = reader.num_frames
        results["avg_fps"] = reader.fps
        return results


class VideoDecode:
    """Decode the sampled frames and close the video.

    Reads ``video_reader``, ``frame_inds``. Adds ``imgs`` (uint8 ``[T, H, W, 3]``, T = all clips' frames),
    ``original_shape``, ``img_shape``; removes ``video_reader``.

    Args:
        mode: ``'accurate'`` or ``'efficient'``; both decode exactly the sampled frames here.
    """

    def __init__(self, mode: str = "accurate"):
        if mode not in ("accurate", "efficient"):
            raise InputError(f"mode must be 'accurate' or 'efficient', got '{mode}'")

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        reader = results.pop("video_reader", None)
        if reader is None:
            raise KeyError(f"{type(self).__name__} needs 'video_reader': put an Init step (e.g. PyAVInit) first")
        if "frame_inds" not in results:
            reader.close()
            raise KeyError(f"{type(self).__name__} needs 'frame_inds': put SampleFrames before it")
        try:
            imgs = reader.get_frames(np.asarray(results["frame_inds"]).reshape(-1))
        finally:
            reader.close()
        results["imgs"] = imgs
        results["original_shape"] = tuple(imgs.shape[1:3])
        results["img_shape"] = tuple(imgs.shape[1:3])
        return results


class DecordInit(VideoInit):
    """mmaction2's ``DecordInit``, served by lateral's decoder (decord is not needed). See :class:`VideoInit`."""

    def __init__(self, io_backend: str = "disk", num_threads: int | None = None, backend: str = "pyav"):
        super().__init__(io_backend, num_threads, backend)


class DecordDecode(VideoDecode):
    """mmaction2's ``DecordDecode``, served by lateral's decoder. See :class:`VideoDecode`."""


class PyAVInit(VideoInit):
    """mmaction2's ``PyAVInit``. See :class:`VideoInit`."""


class PyAVDecode(VideoDecode):
    """mmaction2's ``PyAVDecode``; ``multi_thread`` is accepted (decoding is always threaded). See
    :class:`VideoDecode`."""

    def __init__(self, multi_thread: bool = False, mode: str = "accurate"):
        super().__init__(mode)


class OpenCVInit(VideoInit):
    """mmaction2's ``OpenCVInit``, served by lateral's decoder (OpenCV is not needed). See :class:`VideoInit`."""


class OpenCVDecode(VideoDecode):
    """mmaction2's ``OpenCVDecode``, served by lateral's decoder. See :class:`VideoDecode`."""

    def __init__(self):
        super().__init__("accurate")


class RawFrameDecode:
    """Read the sampled frames of a frame folder (mmaction2 ``RawFrameDecode``).

    Reads ``frame_dir``, ``filename_tmpl`` (default ``'img_{:05}.jpg'``), ``frame_inds`` (which already include
    ``start_index``), ``offset`` (optional), ``modality`` (only ``'RGB'``). Adds ``imgs`` (uint8 ``[T, H, W, 3]``),
    ``original_shape``, ``img_shape``.
    """

    def __init__(self, io_backend: str = "disk", decoding_backend: str = "cv2"):
        if io_backend != "disk":
            raise InputError(f"io_backend '{io_backend}' is not supported; lateral reads frames from disk")

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        modality = results.get("modality", "RGB")
        if modality != "RGB":
            raise InputError(f"RawFrameDecode: modality '{modality}' is not supported (only 'RGB')")
        reader = FrameFolderReader(
            results["frame_dir"], results.get("filename_tmpl", "img_{:05}.jpg"), num_frames=results.get("total_frames")
        )
        frame_inds = np.asarray(results["frame_inds"]).reshape(-1) + int(results.get("offset", 0))
        imgs = reader.get_frames(frame_inds, absolute=True)
        results["imgs"] = imgs
        results["original_shape"] = tuple(imgs.shape[1:3])
        results["img_shape"] = tuple(imgs.shape[1:3])
        return results


def _to_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return torch.as_tensor(value)


class PackActionInputs:
    """Pack the model input and the label (mmaction2 1.x ``PackActionInputs``).

    Reads ``imgs`` (``[V, C, T, H, W]`` after ``FormatShape``), ``label``, and the ``meta_keys`` present.
    Returns a new dict: ``inputs`` (tensor, uint8 or float32), ``label`` (when present), ``meta`` (dict of the meta
    keys found, plus ``filename`` / ``frame_dir``).

    Args:
        collect_keys: not supported (pack ``imgs`` only).
        meta_keys: keys copied into ``meta``.
        algorithm_keys: further keys copied into the item unchanged.
    """

    def __init__(
        self,
        collect_keys: Sequence[str] | None = None,
        meta_keys: Sequence[str] = ("img_shape", "img_key", "video_id", "timestamp"),
        algorithm_keys: Sequence[str] = (),
    ):
        if collect_keys is not None:
            raise InputError("PackActionInputs(collect_keys=...) is not supported: lateral packs 'imgs' as inputs")
        self.meta_keys = tuple(meta_keys)
        self.algorithm_keys = tuple(algorithm_keys)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if "imgs" not in results:
            raise KeyError("PackActionInputs needs 'imgs' in the results")
        packed: dict[str, Any] = {"inputs": _to_tensor(results["imgs"])}
        if "label" in results:
            packed["label"] = results["label"]
        for key in self.algorithm_keys:
            if key in results:
                packed[key] = results[key]
        meta = {key: results[key] for key in self.meta_keys if key in results}
        for key in ("filename", "frame_dir"):
            if key in results:
                meta[key] = results[key]
        packed["meta"] = meta
        return packed


class Collect:
    """Keep only ``keys`` (mmaction2 0.x ``Collect``); the ``meta_keys`` present go into ``results[meta_name]``.

    Reads ``keys`` and ``meta_keys``. Returns a new dict with those.
    """

    def __init__(
        self,
        keys: Sequence[str],
        meta_keys: Sequence[str] = (
            "filename",
            "label",
            "original_shape",
            "img_shape",
            "pad_shape",
            "flip_direction",
            "img_norm_cfg",
        ),
        meta_name: str = "img_metas",
        nested: bool = False,
    ):
        self.keys = tuple(keys)
        self.meta_keys = tuple(meta_keys)
        self.meta_name = meta_name

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        missing = [key for key in self.keys if key not in results]
        if missing:
            raise KeyError(f"Collect: keys {missing} are not in the results (have: {sorted(results)})")
        out = {key: results[key] for key in self.keys}
        if self.meta_keys:
            out[self.meta_name] = {key: results[key] for key in self.meta_keys if key in results}
        return out


class ToTensor:
    """Turn ``keys`` into torch tensors (mmaction2 0.x ``ToTensor``).

    Reads and updates ``keys``.
    """

    def __init__(self, keys: Sequence[str]):
        self.keys = tuple(keys)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        for key in self.keys:
            if key not in results:
                raise KeyError(f"ToTensor: key '{key}' is not in the results (have: {sorted(results)})")
            results[key] = _to_tensor(results[key])
        return results


# type name in configs -> class; one explicit table for recognition and detection, no registration decorators
PIPELINE_STEPS: dict[str, type] = {
    "DecordInit": DecordInit,
    "DecordDecode": DecordDecode,
    "PyAVInit": PyAVInit,
    "PyAVDecode": PyAVDecode,
    "OpenCVInit": OpenCVInit,
    "OpenCVDecode": OpenCVDecode,
    "VideoInit": VideoInit,
    "VideoDecode": VideoDecode,
    "RawFrameDecode": RawFrameDecode,
    "FrameSelector": RawFrameDecode,  # mmaction2's old name
    "SampleFrames": SampleFrames,
    "DenseSampleFrames": DenseSampleFrames,
    "UniformSample": UniformSample,
    "UniformSampleFrames": UniformSample,
    "Resize": Resize,
    "RandomRescale": RandomRescale,
    "RandomCrop": RandomCrop,
    "RandomResizedCrop": RandomResizedCrop,
    "MultiScaleCrop": MultiScaleCrop,
    "CenterCrop": CenterCrop,
    "ThreeCrop": ThreeCrop,
    "TenCrop": TenCrop,
    "Flip": Flip,
    "RandomFlip": RandomFlip,  # detection items (image + boxes)
    "ColorJitter": ColorJitter,
    "Normalize": Normalize,
    "FormatShape": FormatShape,
    "PackActionInputs": PackActionInputs,
    "Collect": Collect,
    "ToTensor": ToTensor,
}


class Compose:
    """Apply steps in order; a step returning None ends the pipeline with None."""

    def __init__(self, steps: Sequence[Callable[[dict], dict | None]]):
        self.steps = list(steps)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any] | None:
        for step in self.steps:
            stepped = step(results)
            if stepped is None:
                return None
            results = stepped
        return results

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        inner = ",\n    ".join(repr(step) for step in self.steps)
        return f"Compose(\n    {inner}\n)"


def build_pipeline(steps: Sequence[dict | Callable] | None, where: str = "pipeline") -> Compose:
    """Build a pipeline from mmaction2 / mmdet-style step dicts (callables are used as they are; None: no steps).

    Args:
        steps: the step dicts, e.g. ``[dict(type='Resize', scale=(-1, 256)), ...]``.
        where: where the list sits in the config (``'train_dataloader.dataset.pipeline'``); errors name a step as
            ``pipeline[3] (Resize)``.

    Raises:
        ConfigError: a step has no or an unknown ``type`` or an unknown key (the closest name is suggested), or its
            values are invalid.
    """
    if steps is None:
        return Compose([])
    if isinstance(steps, dict) or not isinstance(steps, (list, tuple)):
        raise ConfigError(f"{where} must be a list of step dicts, got {type(steps).__name__}")
    built = []
    for position, step in enumerate(steps):
        if callable(step) and not isinstance(step, dict):
            built.append(step)
            continue
        step_where = f"{where}[{position}]"
        try:
            built.append(build_from_table(PIPELINE_STEPS, step, step_where))
        except ConfigError:
            raise
        except (ValueError, TypeError) as err:  # a value the step refuses
            raise ConfigError(f"{step_where} ({step.get('type')}): {err}") from None
    return Compose(built)


def ensure_inputs(results: dict[str, Any]) -> dict[str, Any]:
    """Give a finished pipeline's results the ``inputs`` key the engine reads: 0.x pipelines (``Collect`` +
    ``ToTensor``) leave the model input in ``imgs``."""
    if "inputs" not in results:
        if "imgs" not in results:
            raise KeyError(
                f"the pipeline produced neither 'inputs' nor 'imgs' (keys: {sorted(results)}); end it "
                f"with FormatShape + PackActionInputs"
            )
        results["inputs"] = _to_tensor(results.pop("imgs"))
    return results


def close_reader(results: dict[str, Any] | None) -> None:
    """Close a video left open when a pipeline stops between its Init and Decode steps."""
    if results and results.get("video_reader") is not None:
        results["video_reader"].close()
