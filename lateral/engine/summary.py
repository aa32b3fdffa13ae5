"""``lateral summary``: a per-layer table (name, type, output shape, params, MACs) and totals for a config's model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lateral.config import ConfigError
from lateral.engine.exporting import config_clip_len, config_input_shape

__all__ = ["LayerRow", "ModelSummary", "summarize", "screen_depth", "parse_shape"]


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: str
    params: int
    macs: int


@dataclass
class ModelSummary:
    input_shape: tuple[int, ...]
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0

    def table(self) -> str:
        name_width = max([len("Layer")] + [len(r.name) for r in self.rows])
        kind_width = max([len("Type")] + [len(r.kind) for r in self.rows])
        shape_width = max([len("Output shape")] + [len(r.output_shape) for r in self.rows])
        header = (
            f"{'Layer':<{name_width}}  {'Type':<{kind_width}}  {'Output shape':<{shape_width}}  "
            f"{'Params':>12}  {'MACs':>14}"
        )
        rule = "-" * len(header)
        lines = [rule, header, "=" * len(header)]
        for r in self.rows:
            lines.append(
                f"{r.name:<{name_width}}  {r.kind:<{kind_width}}  {r.output_shape:<{shape_width}}  "
                f"{r.params:>12,}  {r.macs:>14,}"
            )
        lines += [
            "=" * len(header),
            f"Input shape: {list(self.input_shape)}",
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.total_params - self.trainable_params:,}",
            f"Params size (MB): {self.total_params * 4 / 2**20:.2f}",
            f"MACs (conv + linear): {self.total_macs / 1e9:.3f} G  ({2 * self.total_macs / 1e9:.3f} GFLOPs)",
            rule,
        ]
        return "\n".join(lines)


def _shape_of(output) -> str:
    if isinstance(output, torch.Tensor):
        return str([-1] + list(output.shape[1:]))
    if isinstance(output, (tuple, list)):
        return ", ".join(_shape_of(o) for o in output)
    if isinstance(output, dict):
        return ", ".join(f"{k}: {_shape_of(v)}" for k, v in output.items())
    return type(output).__name__


def _macs(module: nn.Module, output) -> int:
    if not isinstance(output, torch.Tensor):
        return 0
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def summarize(model: nn.Module, input_shape: tuple[int, ...], max_depth: int | None = None) -> ModelSummary:
    """Run one forward pass on zeros of ``input_shape`` and record every leaf module (or every module at
    ``max_depth`` dots, aggregating what is inside it)."""
    summary = ModelSummary(tuple(input_shape))
    summary.total_params = sum(p.numel() for p in model.parameters())
    summary.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    macs_by_module: dict[nn.Module, int] = {}
    rows_by_name: dict[str, LayerRow] = {}
    hooks = []

    def depth(name: str) -> int:
        return name.count(".") + 1

    def record(name: str, module: nn.Module):
        def hook(mod, inputs, output):
            own_macs = _macs(mod, output)
            macs_by_module[mod] = macs_by_module.get(mod, 0) + own_macs
            is_leaf = not any(True for _ in mod.children())
            show = depth(name) == max_depth or (is_leaf and (max_depth is None or depth(name) < max_depth))
            if show:
                params = sum(p.numel() for p in mod.parameters())
                macs = sum(macs_by_module.get(m, 0) for m in mod.modules()) if not is_leaf else own_macs
                row = rows_by_name.get(name)
                if row is None:
                    row = LayerRow(name, type(mod).__name__, _shape_of(output), params, macs)
                    rows_by_name[name] = row
                    summary.rows.append(row)
                else:  # a module called twice (shared) adds its work again
                    row.macs += macs

        return hook

    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_hook(record(name, module)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(input_shape)
            if _takes_image_list(model):
                model([img for img in x])
            else:
                model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    summary.total_macs = sum(macs_by_module.values())
    return summary


def _takes_image_list(model: nn.Module) -> bool:
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    return isinstance(model, GeneralizedRCNN)


def parse_shape(text: str) -> tuple[int, ...]:
    """``'1x3x32x224x224'`` -> ``(1, 3, 32, 224, 224)``."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"an input shape is written like 1x3x32x224x224, got '{text}'") from None
    if any(v <= 0 for v in shape):
        raise ConfigError(f"input shape entries must be positive, got '{text}'")
    return shape


def default_input_shape(cfg: dict) -> tuple[int, ...]:
    """The config's ``input_shape``, else one clip of its test pipeline's ``clip_len`` (32 if it has none) at
    224x224, or one 224x224 image for a detection model."""
    own = config_input_shape(cfg)
    if own is not None:
        return own
    model_type = cfg.get("model", {}).get("type", "")
    if model_type in ("ResNetFPN", "FasterRCNN"):
        return (1, 3, 224, 224)
    return (1, 3, config_clip_len(cfg) or 32, 224, 224)


# rows of the table without --depth: what fits a terminal screen with the header and totals
SCREEN_ROWS = 40


def rows_at_depth(model: nn.Module, depth: int) -> int:
    """How many rows :func:`summarize` gives at ``max_depth=depth``, at most (modules the forward skips have none):
    the modules ``depth`` dots deep and the leaves above them."""
    count = 0
    for name, module in model.named_modules():
        if not name:
            continue
        level = name.count(".") + 1
        count += level == depth or (level < depth and not any(True for _ in module.children()))
    return count


def screen_depth(model: nn.Module, max_rows: int = SCREEN_ROWS) -> tuple[int, int]:
    """(the deepest module depth whose table has at most ``max_rows`` rows (at least 1), the deepest depth)."""
    deepest = max((name.count(".") + 1 for name, _ in model.named_modules() if name), default=1)
    fitting = [d for d in range(1, deepest + 1) if rows_at_depth(model, d) <= max_rows]
    return (max(fitting) if fitting else 1), deepest
