"""OpenVINO: a model converted in memory and run on the CPU, as a runner and as the backend of ``lateral.optimize``.

OpenVINO is optional (``pip install 'lateral-vision[openvino]'``): it is imported when a runner is built, through
:func:`~lateral.inference.optional.require`, so this module imports without it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from lateral.inference.folding import inference_copy
from lateral.inference.onednn import weight_version
from lateral.inference.optional import require

__all__ = ["OpenVinoBackend", "OpenVinoRunner"]


class OpenVinoRunner:
    """Converts a PyTorch model with OpenVINO in memory and runs it on CPU: ``runner(x) -> list of tensors``.

    Args:
        model: the model (converted from its eval-mode, BN-folded copy).
        example_input: fixes the input shape the model is compiled for.
        precision: 'fp32' or 'bf16' (OpenVINO's ``INFERENCE_PRECISION_HINT``; it falls back to f32 on CPUs
            without native bf16, see :attr:`inference_precision`).
        threads: inference threads.
    """

    def __init__(
        self, model: nn.Module, example_input: torch.Tensor, precision: str = "fp32", threads: int | None = None
    ):
        ov = require("openvino", "openvino")
        exported = inference_copy(model)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.trace's deprecation, inside OpenVINO
            ov_model = ov.convert_model(exported, example_input=(example_input,))
        config: dict[str, str | int] = {
            "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(ov_model, "CPU", config)
        self.inference_precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: the model input -> every model output, in order."""
        result = self.compiled(x.detach().cpu().contiguous().float().numpy())
        return [torch.from_numpy(np.asarray(result[out])) for out in self.compiled.outputs]


class OpenVinoBackend:
    """Runs a module through OpenVINO and returns what the module would: ``backend(x)`` -> a tensor or a tuple.

    The module is converted and compiled in memory for one sample the first time each per-sample shape is seen (seconds
    for an R50 SlowFast), then reused; a batch runs sample by sample. Converting at the batch size instead made the
    first call grow with it (minutes for 30 test views; figures: benchmarks/README.md, 'Measurements behind the code').
    Used by ``lateral.optimize(..., backend='openvino')`` for a recognizer's backbone.

    Args:
        module: the eval-mode module (a recognizer backbone returning a tensor or a tuple of tensors).
        precision: 'fp32' or 'bf16' (see :class:`OpenVinoRunner`).
        threads: inference threads (None: OpenVINO's default, every core).
    """

    def __init__(self, module: nn.Module, precision: str = "fp32", threads: int | None = None):
        require("openvino", "openvino")  # say which extra is missing now, not on the first video
        self.module = module
        self.precision = precision
        self.threads = threads
        self._runners: dict[tuple[int, ...], OpenVinoRunner] = {}  # sample shape -> compiled model
        self._weights: tuple = ()  # the module's weight versions the runners were converted from

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_runners"] = {}  # OpenVINO's compiled models neither pickle nor deep-copy; rebuilt on the next call
        return state

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """x: the module's input, e.g. [N, C, T, H, W] float32 -> the module's outputs in float32."""
        weights = tuple(weight_version(t) for t in self.module.state_dict().values())
        if weights != self._weights:  # new weights (load_state_dict): every shape is converted again
            self._runners, self._weights = {}, weights
        sample_shape = tuple(x.shape[1:])
        runner = self._runners.get(sample_shape)
        if runner is None:
            runner = self._runners[sample_shape] = OpenVinoRunner(
                self.module, x[:1].float(), self.precision, self.threads
            )
        per_sample = [runner(sample) for sample in x.split(1)]
        outputs = [torch.cat(parts) for parts in zip(*per_sample)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
