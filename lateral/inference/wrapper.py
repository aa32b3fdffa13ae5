"""The inference wrapper: runs a prepared module without autograd in its layout and precision, returns float32.

:class:`InferenceModule` and the training refusal of an inference copy, shared by :func:`lateral.optimize`
(:mod:`lateral.inference.optimization`) and the export path (:func:`lateral.inference.folding.inference_copy`
refuses to export one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lateral.models.layers import check_float_input

__all__ = ["TRAINING_REFUSED", "InferenceModule", "refuse_training"]


def _input_format_ok(x: torch.Tensor, memory_format: torch.memory_format) -> bool:
    wanted_dim = {torch.channels_last_3d: 5, torch.channels_last: 4}.get(memory_format)
    return wanted_dim is None or x.dim() == wanted_dim


def _to_float32(out: Any) -> Any:
    """Cast every floating tensor in a (nested) output to float32; keeps tuples, lists and dicts."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return type(out)((key, _to_float32(value)) for key, value in out.items())
    if isinstance(out, (tuple, list)):
        return type(out)(_to_float32(value) for value in out)
    return out


TRAINING_REFUSED = (
    "this is an inference copy (BatchNorm folded into the convs) and cannot be trained; "
    "train the original model and call lateral.optimize again"
)


def refuse_training(module: nn.Module, mode: bool = True) -> nn.Module:
    """``module.train`` of every part of an inference copy: ``train(False)`` / ``eval()`` work, ``train()`` raises
    before any flag is switched (nn.Module.train would set the module's own flag, then fail further down)."""
    if mode:
        raise RuntimeError(TRAINING_REFUSED)
    return type(module).train(module, False)


class InferenceModule(nn.Module):
    """Runs ``module`` without autograd in the inference layout and precision; returns float32.

    Args:
        module: the BatchNorm-folded module, already converted to ``dtype`` and ``memory_format``.
        dtype: float32 or bfloat16; the input is cast to it.
        memory_format: layout the input is converted to (channels_last_3d for ``[N, C, T, H, W]`` input).
        compile: run ``module`` through ``torch.compile`` (inductor, with freezing: weights become constants and
            are pre-packed for oneDNN). Kernels are built on the first call for each input shape.
        runner: what runs the module instead of PyTorch (an
            :class:`~lateral.inference.openvino_backend.OpenVinoBackend`); ``module`` is then kept for its attributes
            and state dict.
        convert_input: convert the input to ``dtype`` and ``memory_format`` before ``module``; False when the module's
            first convs read any layout and cast themselves (:mod:`lateral.inference.stem`).
    """

    def __init__(
        self,
        module: nn.Module,
        dtype: torch.dtype = torch.float32,
        memory_format: torch.memory_format = torch.contiguous_format,
        compile: bool = False,
        runner: Callable[[torch.Tensor], Any] | None = None,
        convert_input: bool = True,
    ):
        super().__init__()
        self.convert_input = convert_input
        self.module = module
        self.dtype = dtype
        self.memory_format = memory_format
        self.compiled = compile
        self.backend = "torch" if runner is None else type(runner).__name__
        if runner is None:
            runner = torch.compile(module) if compile else module
        # kept out of the submodule registry so the state dict has one copy of each weight
        object.__setattr__(self, "_runner", runner)
        super().train(False)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        # torch.save pickles with protocol 2, where a torch.memory_format does not pickle: keep its name
        state["memory_format"] = str(self.memory_format).removeprefix("torch.")
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        if isinstance(state.get("memory_format"), str):
            state["memory_format"] = getattr(torch, state["memory_format"])
        super().__setstate__(state)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # backbone attributes (out_channels, feature_info, slow_path, ...) stay reachable through the wrapper
            inner = self.__dict__.get("_modules", {}).get("module")
            if inner is None:
                raise
            return getattr(inner, name)

    def train(self, mode: bool = True) -> InferenceModule:
        if mode:
            raise RuntimeError(TRAINING_REFUSED)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> Any:
        """x: [N, C, T, H, W] (or [N, C, H, W] for 2D models), any float dtype -> the module's outputs in float32."""
        if isinstance(x, torch.Tensor):
            check_float_input(x, "the inference copy")  # converting uint8 frames to float would skip normalising
        with torch.no_grad():
            if self.convert_input and _input_format_ok(x, self.memory_format):
                x = x.to(dtype=self.dtype, memory_format=self.memory_format)
            elif self.convert_input:  # a wrong rank: let the module raise its own message about the expected layout
                x = x.to(dtype=self.dtype)
            if self.compiled:
                # inductor reads ``freezing`` when it compiles, i.e. inside this call (the first one per shape);
                # torch.compile(options={"freezing": True}) does not reach that point, so the convs would stay on
                # ATen's default kernels instead of pre-packed oneDNN ones with fused neighbours
                import torch._inductor.config as inductor_config

                with inductor_config.patch(freezing=True):
                    out = self._runner(x)
            else:
                out = self._runner(x)
        return _to_float32(out)

    def extra_repr(self) -> str:
        return (
            f"dtype={self.dtype}, memory_format={self.memory_format}, compiled={self.compiled}, "
            f"backend={self.backend}, "
            f"convert_input={self.convert_input}"
        )
