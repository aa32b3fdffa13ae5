"""Convert SlowFast checkpoints between PyTorchVideo, PySlowFast (PyTorch and Caffe2) and lateral (mmaction2 layout).

Every layout is described by the same skeleton of the SlowFast architecture (:func:`slowfast_units`): a list of
conv+BN units and one classifier, each named by where it sits (pathway, stage, block, part). A layout module
(:mod:`lateral.convert.pytorchvideo`, :mod:`lateral.convert.pyslowfast`) only says how it spells each unit, so the
key map is generated from the architecture numbers (depth, alpha, beta, fusion kernel), never guessed from
suffixes. :func:`apply_key_map` then asserts the shape of every tensor, and checks at the end that every source
tensor was used exactly once and every target tensor was filled.

The converted file is ``{'state_dict': ..., 'meta': ...}``; ``meta`` carries the model config, the input
normalisation and the frame sampling of the source ecosystem (schema in ``docs/convert.md``), and
:func:`config_from_meta` turns it back into a model config.
"""

from __future__ import annotations

import copy
import functools
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lateral.checkpoint import CheckpointError
from lateral.config import ConfigError

__all__ = [
    "ConversionError",
    "SlowFastArch",
    "ConvBN",
    "LoadedCheckpoint",
    "TensorMapping",
    "slowfast_units",
    "build_key_map",
    "infer_arch",
    "apply_key_map",
    "invert_key_map",
    "lateral_shapes",
    "arch_shapes",
    "build_meta",
    "config_from_meta",
    "convert_checkpoint",
    "add_cli",
    "SAMPLING_PRESETS",
    "META_FORMAT",
]

META_FORMAT = "lateral.convert/1"
BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# depth -> residual blocks per stage; the only depths whose SlowFast uses bottleneck blocks in all three layouts
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BOTTLENECK_EXPANSION = 4
# 'TxS' (slow frames x slow interval) -> (alpha, clip_len, frame_interval) of the fast clip, as in the model zoos
SAMPLING_PRESETS = {"4x16": (8, 32, 2), "8x8": (4, 32, 2), "16x8": (4, 64, 2)}
# PyTorchVideo and PySlowFast divide frames by 255, then normalise with these (Caffe2: 114.75 / 57.375 on 0-255)
SOURCE_MEAN = (0.45, 0.45, 0.45)
SOURCE_STD = (0.225, 0.225, 0.225)


class ConversionError(CheckpointError):
    """A checkpoint that does not fit the layout it was declared as; the message names the first offending tensor."""


@dataclass(frozen=True)
class SlowFastArch:
    """The numbers that fix every tensor name and shape of a SlowFast ResNet.

    Args:
        depth: 50, 101 or 152 (residual blocks per stage from :data:`STAGE_BLOCKS`).
        speed_ratio: frame-rate ratio fast / slow (alpha in the paper); the fusion convs stride time by it.
        channel_ratio: channel ratio slow / fast (1 / beta in the paper; 8 in every model zoo).
        fusion_kernel: temporal kernel of the fast-to-slow fusion convs (7 for 8x8 / 16x8, 5 for 4x16 in PySlowFast).
        lateral_infl: a fusion conv outputs ``lateral_infl * C_fast`` channels (2 in the paper).
        num_classes: classifier outputs.
        base_channels: width of the slow stem (64).
    """

    depth: int
    speed_ratio: int = 4
    channel_ratio: int = 8
    fusion_kernel: int = 7
    lateral_infl: int = 2
    num_classes: int = 400
    base_channels: int = 64

    def __post_init__(self) -> None:
        if self.depth not in STAGE_BLOCKS:
            raise ConversionError(f"SlowFast depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth}")
        if self.base_channels % self.channel_ratio != 0:
            raise ConversionError(
                f"slow stem width {self.base_channels} is not a multiple of channel_ratio {self.channel_ratio}"
            )
        for name in ("speed_ratio", "channel_ratio", "fusion_kernel", "lateral_infl", "num_classes"):
            if getattr(self, name) < 1:
                raise ConversionError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        return STAGE_BLOCKS[self.depth]

    @property
    def fast_base_channels(self) -> int:
        return self.base_channels // self.channel_ratio

    @property
    def slow_feat_dim(self) -> int:
        """Channels of the slow pathway's last stage (2048 for R50)."""
        return self.base_channels * 2 ** (len(self.stage_blocks) - 1) * BOTTLENECK_EXPANSION

    @property
    def fast_feat_dim(self) -> int:
        """Channels of the fast pathway's last stage (256 for R50 with beta = 1/8)."""
        return self.fast_base_channels * 2 ** (len(self.stage_blocks) - 1) * BOTTLENECK_EXPANSION

    def describe(self) -> str:
        return (
            f"SlowFast R{self.depth} (alpha={self.speed_ratio}, beta=1/{self.channel_ratio}, "
            f"fusion kernel {self.fusion_kernel}, {self.num_classes} classes)"
        )

    def model_config(self, slow_frame_sampling: str = "linspace", dropout_ratio: float = 0.5) -> dict[str, Any]:
        """The lateral ``Recognizer3D`` config of this architecture, fed the fast clip (the slow path subsamples it).

        The fusion of PyTorchVideo / PySlowFast (time-strided conv, BN, ReLU) is ``lateral_norm=True``;
        ``resample_rate == speed_ratio`` because the input clip is the fast pathway's clip.
        """
        return dict(
            type="Recognizer3D",
            backbone=dict(
                type="ResNet3dSlowFast",
                pretrained=None,
                resample_rate=self.speed_ratio,
                speed_ratio=self.speed_ratio,
                channel_ratio=self.channel_ratio,
                slow_frame_sampling=slow_frame_sampling,
                slow_pathway=dict(
                    type="resnet3d",
                    depth=self.depth,
                    pretrained=None,
                    lateral=True,
                    lateral_norm=True,
                    fusion_kernel=self.fusion_kernel,
                    lateral_infl=self.lateral_infl,
                    base_channels=self.base_channels,
                    conv1_kernel=[1, 7, 7],
                    dilations=[1, 1, 1, 1],
                    conv1_stride_t=1,
                    pool1_stride_t=1,
                    inflate=[0, 0, 1, 1],
                ),
                fast_pathway=dict(
                    type="resnet3d",
                    depth=self.depth,
                    pretrained=None,
                    lateral=False,
                    base_channels=self.fast_base_channels,
                    conv1_kernel=[5, 7, 7],
                    conv1_stride_t=1,
                    pool1_stride_t=1,
                ),
            ),
            cls_head=dict(
                type="SlowFastHead",
                in_channels=self.slow_feat_dim + self.fast_feat_dim,
                num_classes=self.num_classes,
                spatial_type="avg",
                dropout_ratio=dropout_ratio,
                average_clips="prob",
            ),
            data_preprocessor=dict(
                type="ActionDataPreprocessor",
                mean=[round(m * 255, 4) for m in SOURCE_MEAN],
                std=[round(s * 255, 4) for s in SOURCE_STD],
                format_shape="NCTHW",
            ),
        )


@dataclass
class LoadedCheckpoint:
    """What a layout module's ``read`` returns.

    Attributes:
        state: source name -> tensor or numpy array.
        kind: the layout variant ('pytorchvideo', 'pyslowfast' for .pyth, 'caffe2' for .pkl).
        hints: sampling / architecture numbers found in the file (a PySlowFast cfg): ``speed_ratio``,
            ``clip_len``, ``frame_interval``, ``num_clips``, ``test_scale``, ``crop_size``, ``num_crops``.
        ignored: source names that hold no weights (optimizer state) and are skipped on purpose.
    """

    state: dict[str, Any]
    kind: str
    hints: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConvBN:
    """One conv + BN unit of the SlowFast skeleton, named by its place in the architecture.

    Attributes:
        target: the lateral ``ConvModule`` prefix, e.g. ``'backbone.slow_path.layer1.0.conv1'``.
        pathway: 0 slow, 1 fast (fusion convs read the fast pathway: 1).
        stage: 0 for the stem and the fusion after it, 1..4 for the residual stages and the fusion after each.
        block: residual block index within the stage; None for stems and fusions.
        part: 'stem', 'fuse', 'branch1' (projection shortcut), or 'a' / 'b' / 'c' (the bottleneck's three convs).
    """

    target: str
    pathway: int
    stage: int
    block: int | None
    part: str


@dataclass(frozen=True)
class TensorMapping:
    """One tensor: its name in the source layout, its name in the target, and how it is rearranged.

    Attributes:
        source: source name, or None for a tensor the source layout lacks (Caffe2 has no ``num_batches_tracked``)
            and that is filled with zeros.
        target: target name.
        columns: for the classifier weight, the widths of the two pathway blocks of its input columns in the
            source order; the target holds them in the opposite order (PyTorchVideo / PySlowFast concatenate
            slow then fast, lateral's ``SlowFastHead`` fast then slow).
    """

    source: str | None
    target: str
    columns: tuple[int, int] | None = None

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rearrange a source tensor into the target layout (columns ``[A | B]`` -> ``[B | A]``)."""
        if self.columns is None:
            return tensor
        first, second = self.columns
        if tensor.dim() != 2 or tensor.shape[1] != first + second:
            raise ConversionError(
                f"tensor '{self.source}' has shape {list(tensor.shape)}; expected [num_classes, {first + second}] "
                f"(pooled features of both pathways, {first} + {second}) for '{self.target}'"
            )
        return torch.cat((tensor[:, first:], tensor[:, :first]), dim=1)


def slowfast_units(arch: SlowFastArch) -> Iterator[ConvBN]:
    """Every conv + BN unit of a SlowFast ResNet, in the order of PyTorchVideo's and PySlowFast's state dicts.

    Stems (slow, fast), the fusion after the stem, then per stage: the slow blocks, the fast blocks and (except
    after the last stage) the fusion. The classifier is not a unit; layouts name it themselves.
    """
    paths = ((0, "slow_path"), (1, "fast_path"))
    for pathway, path in paths:
        yield ConvBN(f"backbone.{path}.conv1", pathway, 0, None, "stem")
    yield ConvBN("backbone.slow_path.conv1_lateral", 1, 0, None, "fuse")
    num_stages = len(arch.stage_blocks)
    for stage, num_blocks in enumerate(arch.stage_blocks, start=1):
        for pathway, path in paths:
            for block in range(num_blocks):
                prefix = f"backbone.{path}.layer{stage}.{block}"
                if block == 0:  # every first block changes width or stride, so it projects its shortcut
                    yield ConvBN(f"{prefix}.downsample", pathway, stage, block, "branch1")
                for part, conv in (("a", "conv1"), ("b", "conv2"), ("c", "conv3")):
                    yield ConvBN(f"{prefix}.{conv}", pathway, stage, block, part)
        if stage < num_stages:
            yield ConvBN(f"backbone.slow_path.layer{stage}_lateral", 1, stage, None, "fuse")


def build_key_map(arch: SlowFastArch, layout: Any, kind: str) -> list[TensorMapping]:
    """The full key map of ``layout`` (a module with ``conv_bn_names`` and ``head_names``) -> lateral.

    One :class:`TensorMapping` per tensor: for every unit of :func:`slowfast_units` its conv weight and the five BN
    tensors, then the classifier weight (columns reordered, see :class:`TensorMapping`) and bias.
    """
    mappings = []
    for unit in slowfast_units(arch):
        conv_name, bn_names = layout.conv_bn_names(unit, arch.stage_blocks, kind)
        mappings.append(TensorMapping(conv_name, f"{unit.target}.conv.weight"))
        for param in BN_PARAMS:
            mappings.append(TensorMapping(bn_names[param], f"{unit.target}.bn.{param}"))
    weight_name, bias_name = layout.head_names(len(arch.stage_blocks), kind)
    mappings.append(
        TensorMapping(weight_name, "cls_head.fc_cls.weight", columns=(arch.slow_feat_dim, arch.fast_feat_dim))
    )
    mappings.append(TensorMapping(bias_name, "cls_head.fc_cls.bias"))
    return mappings


def infer_arch(state: Mapping[str, Any], layout: Any, kind: str, speed_ratio: int, source: str) -> SlowFastArch:
    """Read the architecture numbers off the named tensors of a source state dict.

    The stem widths give beta, the first fusion conv its kernel and width factor, the number of blocks per stage
    the depth, the classifier the class count. Alpha is not stored in any weight and comes from ``speed_ratio``.
    """

    def shape(unit: ConvBN) -> tuple[int, ...]:
        name = layout.conv_bn_names(unit, (), kind)[0]
        if name not in state:
            raise ConversionError(
                f"{source} is not a {kind} SlowFast checkpoint: it has no '{name}' (first keys: {list(state)[:3]})"
            )
        return tuple(torch.as_tensor(state[name]).shape)

    slow_stem = shape(ConvBN("", 0, 0, None, "stem"))
    fast_stem = shape(ConvBN("", 1, 0, None, "stem"))
    fusion = shape(ConvBN("", 1, 0, None, "fuse"))
    if len(slow_stem) != 5 or len(fast_stem) != 5 or len(fusion) != 5 or fast_stem[0] == 0:
        raise ConversionError(f"{source}: stem / fusion conv weights are not 5-D [C_out, C_in, T, H, W]")
    stage_blocks = []
    for stage in range(1, 5):
        count = 0
        while layout.conv_bn_names(ConvBN("", 0, stage, count, "a"), (), kind)[0] in state:
            count += 1
        stage_blocks.append(count)
    depths: dict[tuple[int, ...], int] = {blocks: depth for depth, blocks in STAGE_BLOCKS.items()}
    if tuple(stage_blocks) not in depths:
        raise ConversionError(
            f"{source}: slow pathway has {stage_blocks} blocks per stage; SlowFast R50/R101/R152 have "
            f"{', '.join(str(list(b)) for b in STAGE_BLOCKS.values())}"
        )
    head_weight = layout.head_names(len(stage_blocks), kind)[0]
    if head_weight not in state:
        raise ConversionError(f"{source}: no classifier '{head_weight}'")
    return SlowFastArch(
        depth=depths[tuple(stage_blocks)],
        speed_ratio=speed_ratio,
        channel_ratio=slow_stem[0] // fast_stem[0],
        fusion_kernel=fusion[2],
        lateral_infl=max(fusion[0] // fast_stem[0], 1),
        num_classes=torch.as_tensor(state[head_weight]).shape[0],
        base_channels=slow_stem[0],
    )


def lateral_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the lateral model ``config``, read off the model itself."""
    from lateral.registry import build_model

    # a CPU build (about a second for R50) beats the meta device, whose first use imports and traces Python
    # decompositions
    model = build_model(copy.deepcopy(config))
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


@functools.lru_cache(maxsize=8)
def arch_shapes(arch: SlowFastArch) -> dict[str, tuple[int, ...]]:
    """:func:`lateral_shapes` of ``arch.model_config()``, cached (do not modify the returned dict)."""
    # building even a meta model takes a while for R101 / R152, and converting both ways needs it twice
    return lateral_shapes(arch.model_config("linspace"))


def apply_key_map(
    state: Mapping[str, Any],
    mappings: Sequence[TensorMapping],
    target_shapes: Mapping[str, tuple[int, ...]],
    source: str,
    ignored: Sequence[str] = (),
) -> OrderedDict[str, torch.Tensor]:
    """Rename and check every tensor of ``state``.

    Args:
        state: source name -> tensor (numpy arrays are turned into tensors).
        mappings: the key map, in the order the result should have.
        target_shapes: target name -> expected shape; the map must fill exactly these names.
        source: what ``state`` is, for error messages (a file name and its layout).
        ignored: source names that are known to carry no weights (optimizer state) and are skipped.

    Returns:
        target name -> tensor, in the order of ``target_shapes``.

    Raises:
        ConversionError: naming the first tensor whose shape does not fit, the first one missing, or the first one
            left over.
    """
    sources = [m.source for m in mappings if m.source is not None]
    targets = [m.target for m in mappings]
    if len(set(sources)) != len(sources) or len(set(targets)) != len(targets):
        raise ConversionError(f"key map for {source} uses a name twice (this is a bug in lateral.convert)")
    unfilled = [name for name in target_shapes if name not in set(targets)]
    foreign = [name for name in targets if name not in target_shapes]
    if unfilled or foreign:
        first = unfilled[0] if unfilled else foreign[0]
        raise ConversionError(
            f"key map for {source} does not match the target model: {len(unfilled)} target tensors unfilled, "
            f"{len(foreign)} unknown; first: '{first}' (this is a bug in lateral.convert)"
        )

    missing = [m for m in mappings if m.source is not None and m.source not in state]
    result: OrderedDict[str, torch.Tensor] = OrderedDict()
    for mapping in mappings:
        expected = tuple(target_shapes[mapping.target])
        if mapping.source is None:
            result[mapping.target] = torch.zeros(expected, dtype=torch.int64)
            continue
        if mapping.source not in state:
            continue  # reported below, after every present tensor has had its shape checked
        value = state[mapping.source]
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        tensor = mapping.apply(tensor)
        if tuple(tensor.shape) != expected:
            raise ConversionError(
                f"{source}: tensor '{mapping.source}' has shape {list(tensor.shape)}, but '{mapping.target}' "
                f"needs {list(expected)}"
            )
        result[mapping.target] = tensor
    if missing:
        names = ", ".join(f"'{m.source}'" for m in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConversionError(
            f"{source}: {len(missing)} tensors are missing: {names}{more} (the first is needed for "
            f"'{missing[0].target}')"
        )
    result = OrderedDict((name, result[name]) for name in target_shapes)
    used = set(sources) | set(ignored)
    leftover = [name for name in state if name not in used]
    if leftover:
        raise ConversionError(
            f"{source}: {len(leftover)} tensors have no place in the target model; the first is '{leftover[0]}' "
            f"(shape {list(torch.as_tensor(state[leftover[0]]).shape)})"
        )
    return result


def invert_key_map(mappings: Sequence[TensorMapping]) -> list[TensorMapping]:
    """The map of the opposite direction (target -> source), in the same order."""
    inverted = []
    for mapping in mappings:
        if mapping.source is None:
            raise ConversionError(
                f"'{mapping.target}' has no counterpart in the source layout, so this layout cannot be written"
            )
        columns = None if mapping.columns is None else (mapping.columns[1], mapping.columns[0])
        inverted.append(TensorMapping(mapping.target, mapping.source, columns))
    return inverted


def build_meta(
    arch: SlowFastArch,
    source: dict[str, Any],
    clip_len: int,
    frame_interval: int,
    num_clips: int = 10,
    test_scale: int = 256,
    crop_size: int = 256,
    num_crops: int = 3,
    train_crop_size: int = 224,
) -> dict[str, Any]:
    """The ``meta`` of a converted checkpoint: what ``lateral predict`` needs to reproduce the source model.

    Args:
        arch: the architecture numbers.
        source: where the weights came from (``ecosystem``, ``layout``, ``file``, ...).
        clip_len: frames of the clip fed to the model (the fast pathway's clip).
        frame_interval: source frames between two clip frames.
        num_clips: temporal clips averaged at test time.
        test_scale: short side the frames are resized to.
        crop_size: side of the square crops.
        num_crops: spatial crops per clip at test time (3 in the model zoos, 1 for a center crop).
        train_crop_size: crop the source head's pooling window was sized for (``head_pool``: slow
            ``[clip_len / alpha, 7, 7]``, fast ``[clip_len, 7, 7]`` at 224).
    """
    if clip_len % arch.speed_ratio != 0:
        raise ConversionError(f"clip_len {clip_len} must be a multiple of alpha={arch.speed_ratio}")
    head_kernels = [
        [clip_len // arch.speed_ratio, train_crop_size // 32, train_crop_size // 32],
        [clip_len, train_crop_size // 32, train_crop_size // 32],
    ]
    config = arch.model_config("linspace")
    config["cls_head"]["pool_kernels"] = head_kernels  # pool as the source head does (exact on any crop size)
    return {
        "format": META_FORMAT,
        "source": dict(source),
        "arch": asdict(arch),
        "config": config,
        "normalization": {
            "mean": list(SOURCE_MEAN),
            "std": list(SOURCE_STD),
            "value_range": [0.0, 1.0],
            "channel_order": "RGB",
        },
        "sampling": {
            "clip_len": clip_len,
            "frame_interval": frame_interval,
            "num_clips": num_clips,
            "slow_frames": clip_len // arch.speed_ratio,
            "slow_frame_sampling": "linspace",
            "test_scale": test_scale,
            "crop_size": crop_size,
            "num_crops": num_crops,
        },
        # the source heads average-pool with these fixed windows (stride 1), then average the class scores over
        # window positions; lateral's global average equals that when the feature map is the window (224 crops)
        "head_pool": {"kernel_size": head_kernels, "stride": [1, 1, 1]},
    }


def config_from_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The lateral model config stored in a converted checkpoint's ``meta`` (a fresh copy, safe to modify).

    Raises:
        ConfigError: if ``meta`` was not written by ``lateral convert`` (e.g. a native mmaction2 checkpoint, whose
            config must come from its config file).
    """
    if not isinstance(meta, Mapping) or meta.get("format") != META_FORMAT:
        found = meta.get("format") if isinstance(meta, Mapping) else type(meta).__name__
        raise ConfigError(
            f"checkpoint meta was not written by 'lateral convert' (format {found!r}, expected {META_FORMAT!r}); "
            "pass the model config file explicitly"
        )
    config = meta.get("config")
    if not isinstance(config, Mapping) or config.get("type") != "Recognizer3D":
        raise ConfigError("checkpoint meta has no model config ('config' with type 'Recognizer3D')")
    return copy.deepcopy(dict(config))


def arch_from_meta(meta: Mapping[str, Any]) -> SlowFastArch:
    """The :class:`SlowFastArch` recorded in a converted checkpoint's ``meta``."""
    if not isinstance(meta, Mapping) or not isinstance(meta.get("arch"), Mapping):
        raise ConversionError("checkpoint meta has no 'arch' entry; only files written by 'lateral convert' have one")
    try:
        return SlowFastArch(**meta["arch"])
    except TypeError as err:
        raise ConversionError(f"checkpoint meta 'arch' is not understood: {err}") from None


def _check_expected(arch: SlowFastArch, depth: int | None, num_classes: int | None, source: str) -> None:
    """Compare what the user asked for with what the checkpoint holds."""
    if depth is not None and depth != arch.depth:
        raise ConversionError(
            f"{source} holds a SlowFast R{arch.depth} (blocks per stage {arch.stage_blocks}), not R{depth}"
        )
    if num_classes is not None and num_classes != arch.num_classes:
        raise ConversionError(f"{source} classifies {arch.num_classes} classes, not {num_classes}")


def convert_checkpoint(
    path: str | os.PathLike,
    source_format: str,
    target_format: str = "lateral",
    depth: int | None = None,
    num_classes: int | None = None,
    speed_ratio: int | None = None,
    clip_len: int | None = None,
    frame_interval: int | None = None,
) -> dict[str, Any]:
    """Read a checkpoint file and return the converted checkpoint dict (not yet written).

    Args:
        path: the source file (PyTorchVideo ``.pyth``/``.pt``, PySlowFast ``.pyth`` or Caffe2 ``.pkl``, or a
            ``lateral convert`` output when ``source_format='lateral'``).
        source_format: 'pytorchvideo', 'pyslowfast' or 'lateral'.
        target_format: 'lateral' (``{'state_dict', 'meta'}``), 'pytorchvideo' or 'pyslowfast'
            (``{'model_state'}``).
        depth, num_classes: what the checkpoint is expected to hold; a different one is an error.
        speed_ratio: alpha; not stored in the weights (default: the file's PySlowFast cfg, else 4).
        clip_len, frame_interval: the fast clip of the source model (default: PySlowFast cfg, else 32 and 2).
    """
    from lateral.convert import pyslowfast, pytorchvideo

    layouts = {"pytorchvideo": pytorchvideo, "pyslowfast": pyslowfast}
    if source_format not in (*layouts, "lateral"):
        raise ConfigError(f"--from must be 'pytorchvideo', 'pyslowfast' or 'lateral', got '{source_format}'")
    if target_format not in (*layouts, "lateral"):
        raise ConfigError(f"--to must be 'lateral', 'pytorchvideo' or 'pyslowfast', got '{target_format}'")
    if source_format == target_format:
        raise ConfigError(f"--from and --to are both '{source_format}'; nothing to convert")
    path = Path(path)

    if source_format == "lateral":
        from lateral.checkpoint import extract_state_dict, read_checkpoint

        if any(value is not None for value in (speed_ratio, clip_len, frame_interval)):
            raise ConfigError(
                "--alpha / --preset / --clip-len / --frame-interval describe a foreign source; a lateral file "
                "carries them in its meta"
            )

        obj = read_checkpoint(path)
        stored_meta = obj.get("meta")
        meta = stored_meta if isinstance(stored_meta, Mapping) else {}
        arch = arch_from_meta(meta)
        _check_expected(arch, depth, num_classes, str(path))
        lateral_state = extract_state_dict(obj, str(path))
    else:
        layout = layouts[source_format]
        loaded = layout.read(path)
        hints = dict(loaded.hints)
        for name, value in (("speed_ratio", speed_ratio), ("clip_len", clip_len), ("frame_interval", frame_interval)):
            if value is not None:
                hints[name] = value
        arch = infer_arch(loaded.state, layout, loaded.kind, hints.get("speed_ratio", 4), str(path))
        _check_expected(arch, depth, num_classes, str(path))
        mappings = build_key_map(arch, layout, loaded.kind)
        desc = f"{path} ({loaded.kind} layout, {arch.describe()})"
        lateral_state = apply_key_map(loaded.state, mappings, arch_shapes(arch), desc, loaded.ignored)
        meta = build_meta(
            arch,
            {"ecosystem": source_format, "layout": loaded.kind, "file": path.name, "num_tensors": len(loaded.state)},
            clip_len=hints.get("clip_len", 32),
            frame_interval=hints.get("frame_interval", 2),
            num_clips=hints.get("num_clips", 10),
            test_scale=hints.get("test_scale", 256),
            crop_size=hints.get("crop_size", 256),
            num_crops=hints.get("num_crops", 3),
        )

    if target_format == "lateral":
        return {"state_dict": lateral_state, "meta": meta}
    layout = layouts[target_format]
    mappings = invert_key_map(build_key_map(arch, layout, layout.WRITABLE_KIND))
    # the column swap keeps shapes, so each target tensor has the shape of its lateral counterpart
    model_shapes = arch_shapes(arch)
    shapes = {m.target: model_shapes[m.source] for m in mappings if m.source is not None}  # all have one
    desc = f"{path} (lateral layout, {arch.describe()})"
    return {"model_state": apply_key_map(lateral_state, mappings, shapes, desc)}


def convert_fpn_checkpoint(
    path: str | os.PathLike, source_format: str, target_format: str, depth: int | None = None
) -> dict[str, Any]:
    """Convert an FPN checkpoint between the FPN seed's layout and lateral's ``ResNetFPN(style='seed')``.

    Returns ``{'state_dict', 'meta'}`` (meta carrying the model config, so that the file alone rebuilds the model)
    for ``target_format='lateral'``, a bare seed-layout state dict for ``'fpn-seed'``.
    """
    from lateral.checkpoint import read_state_dict
    from lateral.convert.fpn_seed import from_seed_fpn, to_seed_fpn

    state = read_state_dict(path)
    if (source_format, target_format) == ("fpn-seed", "lateral"):
        converted, found_depth = from_seed_fpn(state, str(path))
    elif (source_format, target_format) == ("lateral", "fpn-seed"):
        converted, found_depth = to_seed_fpn(state, str(path))
    else:
        raise ConversionError(
            f"cannot convert an FPN from '{source_format}' to '{target_format}'; FPN checkpoints "
            f"convert between 'fpn-seed' and 'lateral'"
        )
    if depth is not None and depth != found_depth:
        raise ConversionError(f"{path} holds an FPN{found_depth}, not the FPN{depth} asked for with --depth")
    if target_format == "fpn-seed":
        return converted
    model = dict(type="ResNetFPN", depth=found_depth, style="seed")
    meta = {
        "format": META_FORMAT,
        "source": {"ecosystem": source_format, "file": Path(path).name, "num_tensors": len(state)},
        "config": {"model": model},
    }
    return {"state_dict": converted, "meta": meta}
