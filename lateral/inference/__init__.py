"""Fast inference and export: the optimised inference copy, ONNX / TorchScript / OpenVINO, and timing helpers.

- :mod:`lateral.inference.optimization`: :func:`optimize` (BatchNorm folding, channels-last, bf16, torch.compile).
- :mod:`lateral.inference.exporters`: ONNX and TorchScript files, onnxruntime and OpenVINO runners, parity checks.
- :mod:`lateral.inference.timing`: MAC counting, peak GFLOP/s probes and interleaved timing (``lateral bench``).

Inside, imports go one way (leaves first): ``onednn``, ``scratch``, ``optional`` and ``wrapper`` import nothing of
this package; ``folding`` builds on ``wrapper``; ``openvino_backend`` on ``folding``, ``onednn`` and ``optional``;
``winograd``, ``temporal_winograd`` and ``stem`` on ``onednn`` and ``scratch``; ``optimization`` on all of those;
``exporters`` and ``timing`` come last.

The command-line front end (``lateral export``, ``lateral bench``) is :mod:`lateral.cli.export`.
"""

from lateral.inference.optimization import (
    InferenceModule,
    PrecisionError,
    bf16_supported,
    fold_batchnorm,
    optimize,
    resolve_precision,
)

__all__ = ["InferenceModule", "PrecisionError", "bf16_supported", "fold_batchnorm", "optimize", "resolve_precision"]
