"""BatchNorm folding: ``bn(conv(x))`` becomes one conv, for the inference copy and for export.

:func:`fold_batchnorm` folds, in place, the norms whose place after a conv is known; :func:`inference_copy` is the
eval-mode, folded float32 copy that the exporters and the OpenVINO runners convert.
"""

from __future__ import annotations

import copy
import warnings
from typing import cast

import torch
from torch import nn

from lateral.inference.wrapper import InferenceModule
from lateral.models.layers import ConvModule

__all__ = ["fold_batchnorm", "fold_conv_bn", "inference_copy"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_foldable_norm(module: nn.Module) -> bool:
    """BatchNorm with running statistics (nn.BatchNorm*d, SyncBatchNorm, torchvision's FrozenBatchNorm2d)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.track_running_stats and module.running_var is not None
    return type(module).__name__ == "FrozenBatchNorm2d" and hasattr(module, "running_var")


@torch.no_grad()
def fold_conv_bn(conv: nn.modules.conv._ConvNd, bn: nn.Module) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: ``bn(conv(x)) == conv'(x)``.

    w' = w * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta, computed in float64 so the
    folded float32 weights are the correctly rounded values.
    """
    weight = conv.weight
    # bn is a _BatchNorm with running statistics or a FrozenBatchNorm2d (_is_foldable_norm): its statistics are
    # tensors, its affine parameters tensors or None
    running_mean, running_var, gamma_param, beta_param = bn.running_mean, bn.running_var, bn.weight, bn.bias
    assert isinstance(running_mean, torch.Tensor) and isinstance(running_var, torch.Tensor)
    mean, var = running_mean.double(), running_var.double()
    gamma = gamma_param.double() if isinstance(gamma_param, torch.Tensor) else torch.ones_like(var)
    beta = beta_param.double() if isinstance(beta_param, torch.Tensor) else torch.zeros_like(var)
    scale = gamma * torch.rsqrt(var + cast(float, bn.eps))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    weight.copy_((weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))).to(weight.dtype))
    new_bias = ((bias - mean) * scale + beta).to(weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.copy_(new_bias)


def _sibling_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv, norm) attribute pairs of ``module`` whose forward applies the norm directly to the conv's output.

    Only classes whose forward is known are listed: a conv and a norm that merely share a parent may be used in
    any order, so guessing from names would silently change results.
    """
    if isinstance(module, ConvModule):
        return [("conv", "bn")]
    cls = type(module)
    if cls.__module__ == "torchvision.models.resnet" and cls.__name__ in ("BasicBlock", "Bottleneck", "ResNet"):
        return [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
    if cls.__module__ == "lateral.models.resnet" and cls.__name__ == "ResNetTrunk":  # FPN bottom-up stem
        return [("conv1", "bn1")]
    return []


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every BatchNorm of ``model`` that directly follows a conv; ``model`` must be in eval mode.

    Recognised patterns: mmcv-style ``ConvModule`` (``conv`` then ``bn``; the ``bn`` slot becomes None),
    torchvision ResNet blocks and the FPN trunk stem (``convK`` then ``bnK``) and consecutive ``conv, bn`` children of
    an ``nn.Sequential`` (the norm becomes ``nn.Identity``). Other norms are left as they are.

    Returns:
        The number of norms folded.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (folding uses the running statistics)")
    folded = 0
    for module in list(model.modules()):
        for conv_name, bn_name in _sibling_pairs(module):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, _CONV_TYPES) and bn is not None and _is_foldable_norm(bn):
                fold_conv_bn(conv, bn)
                setattr(module, bn_name, None if isinstance(module, ConvModule) else nn.Identity())
                folded += 1
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, conv), (bn_name, bn) in zip(children, children[1:]):
                if isinstance(conv, _CONV_TYPES) and _is_foldable_norm(bn):
                    fold_conv_bn(conv, bn)
                    setattr(module, bn_name, nn.Identity())
                    folded += 1
    return folded


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode, BatchNorm-folded deep copy of ``model`` in float32, for export and as a parity reference.

    A model in training mode is switched to eval mode (with a warning): dropout and batch statistics have no place
    in an exported inference graph.

    Raises:
        ValueError: ``model`` is (or holds) a copy made by ``lateral.optimize``, whose direct oneDNN calls and cached
            packed weights do not trace.
    """
    if any(isinstance(module, InferenceModule) for module in model.modules()):
        raise ValueError(
            "this is an inference copy made by lateral.optimize (oneDNN calls, packed weights), which does not export; "
            "export the original model: the export folds its BatchNorm itself and runtimes pick their own layouts"
        )
    if model.training:
        warnings.warn(
            f"{type(model).__name__} is in training mode; exporting it in eval mode (dropout off, BatchNorm running "
            "statistics)",
            stacklevel=3,
        )
    exported = copy.deepcopy(model).eval().float()
    for param in exported.parameters():
        param.requires_grad_(False)
    fold_batchnorm(exported)
    return exported
