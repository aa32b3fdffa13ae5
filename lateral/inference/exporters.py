"""ONNX and TorchScript export, and runners for exported models (onnxruntime, OpenVINO) with a parity check.

What is exported is the eval-mode model with BatchNorm folded into the convs (in float64, so the folded weights
are as exact as float32 allows), in the default memory format and float32: runtimes pick their own layouts.
A recognizer exports as ``input [N, C, T, H, W] -> logits [N, num_classes]`` with a dynamic batch dimension; an
FPN backbone as ``input [N, 3, H, W] -> one output per pyramid level``.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lateral.errors import InputError
from lateral.inference.folding import inference_copy
from lateral.inference.openvino_backend import OpenVinoBackend, OpenVinoRunner
from lateral.inference.optional import MissingDependencyError, require

__all__ = [
    "EXPORT_FORMATS",
    "MissingDependencyError",
    "OnnxRuntimeRunner",
    "OpenVinoBackend",
    "OpenVinoRunner",
    "check_export",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "flatten_outputs",
    "inference_copy",
    "output_names",
]

EXPORT_FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """A model output (tensor, tuple/list, dict) as a flat list of tensors, dict values in key order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for value in out.values() for t in flatten_outputs(value)]
    if isinstance(out, (tuple, list)):
        return [t for value in out for t in flatten_outputs(value)]
    raise TypeError(f"cannot export an output of type {type(out).__name__}")


def output_names(model: nn.Module, example_output: Any) -> list[str]:
    """Graph output names: ``logits`` for a recognizer, the feature names for a backbone returning a dict
    (``p2``..``p5`` for a seed FPN; ``out_0``..``out_3``, ``pool`` for a torchvision-style one)."""
    if hasattr(model, "cls_head") and isinstance(example_output, torch.Tensor):
        return ["logits"]
    if isinstance(example_output, dict):
        # ONNX value names must not look like the exporter's numbered internal values: '0' becomes 'out_0'
        return [str(key) if str(key).isidentifier() else f"out_{key}" for key in example_output]
    count = len(flatten_outputs(example_output))
    return ["output"] if count == 1 else [f"output{i}" for i in range(count)]


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.exists() and path.is_dir():
        raise InputError(f"--out {path} is a directory; give a file name such as {path / 'model.onnx'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: torch.Tensor,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` as ONNX.

    Args:
        model: a recognizer or backbone (any mode; the export uses an eval-mode, BN-folded copy).
        path: the ``.onnx`` file to write.
        example_input: [N, C, T, H, W] (or [N, C, H, W] for a 2D backbone); fixes every dimension but the batch.
        opset: ONNX opset.
        dynamic_batch: leave dimension 0 of the input and of every output symbolic.

    Returns:
        The path written.
    """
    require("onnx", "onnx")  # torch.onnx.export needs it to write the file
    path = _check_path(path)
    exported = inference_copy(model)
    with torch.no_grad():
        example_output = exported(example_input)
    names = output_names(model, example_output)
    dynamic_axes = {name: {0: "batch"} for name in ["input", *names]} if dynamic_batch else None
    with warnings.catch_warnings():
        # the shape checks in forward become constants of the traced graph, which is what we want
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        # the TorchScript-based exporter: the dynamo one needs onnxscript, which the 'onnx' extra does not pull in
        torch.onnx.export(
            exported,
            (example_input,),
            str(path),
            input_names=["input"],
            output_names=names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor) -> Path:
    """Trace ``model`` (eval-mode, BN-folded copy) on ``example_input`` and save it with ``torch.jit.save``."""
    path = _check_path(path)
    exported = inference_copy(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        with torch.no_grad():
            # strict=False: a backbone returns a dict of feature maps, which the traced module keeps
            traced = torch.jit.trace(exported, (example_input,), check_trace=False, strict=False)
        torch.jit.save(traced, str(path))
    return path


def export_model(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, fmt: str) -> Path:
    """Export in ``fmt`` ('onnx' or 'torchscript')."""
    if fmt == "onnx":
        return export_onnx(model, path, example_input)
    if fmt == "torchscript":
        return export_torchscript(model, path, example_input)
    raise InputError(f"--format must be one of {EXPORT_FORMATS}, got {fmt!r}")


class OnnxRuntimeRunner:
    """Runs an ONNX file with onnxruntime's CPU provider: ``runner(x) -> list of float32 tensors``.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None: onnxruntime's default, one per core).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        ort = require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # idle workers would otherwise spin after each run and steal the cores from whatever runs next (the
        # interleaved benchmark, or the PyTorch model in a parity check)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: the model input -> every graph output, in graph order."""
        feed = {self.input_name: x.detach().cpu().contiguous().float().numpy()}
        return [torch.from_numpy(np.asarray(out)) for out in self.session.run(None, feed)]


def _max_difference(reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor]) -> float:
    if len(reference) != len(candidate):
        raise InputError(f"the exported model returns {len(candidate)} outputs, PyTorch returns {len(reference)}")
    diff = 0.0
    for ref, out in zip(reference, candidate):
        if tuple(ref.shape) != tuple(out.shape):
            raise InputError(f"output shape {list(out.shape)} of the exported model differs from {list(ref.shape)}")
        diff = max(diff, (ref.float() - out.float()).abs().max().item())
    return diff


def load_runner(path: str | os.PathLike, fmt: str, threads: int | None = None) -> Callable[[torch.Tensor], list]:
    """A callable running an exported file: onnxruntime for 'onnx', ``torch.jit.load`` for 'torchscript'."""
    if fmt == "onnx":
        return OnnxRuntimeRunner(path, threads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.load's deprecation notice
        module = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return flatten_outputs(module(x))

    return run


def check_export(
    model: nn.Module,
    path: str | os.PathLike,
    fmt: str,
    inputs: Sequence[torch.Tensor] | torch.Tensor,
    threads: int | None = None,
) -> dict[str, float]:
    """Run the exported file and the eager PyTorch model on the same inputs.

    Args:
        model: the PyTorch model that was exported (compared in eval mode, BatchNorm not folded).
        path: the exported file.
        fmt: 'onnx' or 'torchscript'.
        inputs: inputs to compare on (e.g. batch 1 and batch 2 to exercise the dynamic batch), or one tensor.
        threads: threads for onnxruntime.

    Returns:
        ``{'max_abs_diff', 'max_rel_diff', 'max_abs_reference', 'seconds'}`` over all inputs and outputs; the
        relative difference is to the largest magnitude of the PyTorch output.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = [inputs]
    reference_model = copy.deepcopy(model).eval() if model.training else model
    runner = load_runner(path, fmt, threads)
    max_abs, max_rel, max_ref, start = 0.0, 0.0, 0.0, time.perf_counter()
    for x in inputs:
        with torch.no_grad():
            reference = flatten_outputs(reference_model(x))
        diff = _max_difference(reference, runner(x))
        scale = max(ref.abs().max().item() for ref in reference)
        max_abs, max_rel = max(max_abs, diff), max(max_rel, diff / max(scale, 1e-12))
        max_ref = max(max_ref, scale)
    return {
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "max_abs_reference": max_ref,
        "seconds": time.perf_counter() - start,
    }
