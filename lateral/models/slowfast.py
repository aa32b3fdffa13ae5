"""SlowFast (Feichtenhofer et al., 2019): a slow, wide pathway and a fast, thin one joined by lateral convs.

The fast pathway sees every ``resample_rate // speed_ratio``-th frame, the slow pathway every ``resample_rate``-th.
After the stem and after each of the first three stages, a time-strided conv on the fast features (the lateral
connection) is concatenated onto the slow features. Names and numerics equal mmaction2's ``ResNet3dSlowFast``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from lateral.checkpoint import CheckpointError, load_checkpoint, local_checkpoint_path, read_state_dict
from lateral.config import ConfigError
from lateral.errors import InputError
from lateral.models.layers import ConvModule, kaiming_init
from lateral.models.resnet3d import ResNet3d, check_video_input
from lateral.registry import check_kwargs, take_init_cfg

__all__ = ["ResNet3dPathway", "ResNet3dSlowOnly", "ResNet3dSlowFast", "slow_frame_indices"]

logger = logging.getLogger(__name__)


class ResNet3dPathway(ResNet3d):
    """One pathway of SlowFast: a :class:`ResNet3d` that may receive lateral connections from the other pathway.

    Args:
        lateral: build the lateral convs that carry the fast pathway into this one (True for the slow pathway).
        lateral_norm: follow each lateral conv by BN and activation.
        speed_ratio: frame-rate ratio between the fast and the slow pathway (alpha in the paper); the lateral
            convs stride time by it.
        channel_ratio: channel ratio between the slow and the fast pathway (1 / beta in the paper).
        fusion_kernel: temporal kernel size of the lateral convs.
        lateral_infl: a lateral conv outputs ``lateral_infl * C_fast`` channels (2 in the paper's
            time-strided-conv fusion).
        lateral_activate: per stage (stem, stage 1, 2, 3), whether that lateral connection exists.
        lateral_inv: the lateral goes from a wide pathway to a thin one (channels multiplied instead of divided).
        **kwargs: every :class:`ResNet3d` argument.
    """

    def __init__(
        self,
        lateral: bool = False,
        lateral_norm: bool = False,
        speed_ratio: int = 8,
        channel_ratio: int = 8,
        fusion_kernel: int = 5,
        lateral_infl: int = 2,
        lateral_activate: Sequence[int] = (1, 1, 1, 1),
        lateral_inv: bool = False,
        **kwargs,
    ):
        self.lateral = lateral
        self.lateral_norm = lateral_norm
        self.speed_ratio = speed_ratio
        self.channel_ratio = channel_ratio
        self.fusion_kernel = fusion_kernel
        self.lateral_infl = lateral_infl
        self.lateral_activate = tuple(lateral_activate)
        self.lateral_inv = lateral_inv
        if "lateral_inplanes" in kwargs:
            raise ConfigError("ResNet3dPathway computes lateral_inplanes itself; remove it from the config")
        super().__init__(lateral_inplanes=self._lateral_inplanes(kwargs), **kwargs)

        self.lateral_connections: list[str] = []
        if not lateral:
            return
        if self.lateral_activate[0]:
            self.conv1_lateral = self._make_lateral(self.base_channels)
        for i in range(len(self.stage_blocks) - 1):  # the last stage feeds the head, not a lateral
            if self.lateral_activate[i + 1]:
                channels = self.base_channels * 2**i * self.block.expansion
                setattr(self, f"layer{i + 1}_lateral", self._make_lateral(channels))
                self.lateral_connections.append(f"layer{i + 1}_lateral")

    def _lateral_channels(self, channels: int) -> int:
        if self.lateral_inv:
            return channels * self.channel_ratio // self.lateral_infl
        return channels * self.lateral_infl // self.channel_ratio

    def _lateral_inplanes(self, kwargs: dict) -> list[int]:
        """Channels that the lateral concatenation adds to each stage's input."""
        depth = kwargs.get("depth", 50)
        expansion = 1 if depth < 50 else 4
        base_channels = kwargs.get("base_channels", 64)
        inplanes = []
        for i in range(kwargs.get("num_stages", 4)):
            # the channels entering stage i in *this* pathway, scaled to the other pathway's width below
            stage_in = base_channels if i == 0 else base_channels * 2 ** (i - 1) * expansion
            active = self.lateral and i < len(self.lateral_activate) and self.lateral_activate[i]
            inplanes.append(self._lateral_channels(stage_in) if active else 0)
        return inplanes

    def _make_lateral(self, slow_channels: int) -> ConvModule:
        """Time-strided conv: fast features [N, C/beta, T, H, W] -> [N, infl*C/beta, T/alpha, H, W]."""
        if self.lateral_inv:
            in_channels = slow_channels * self.channel_ratio
        else:
            in_channels = slow_channels // self.channel_ratio
        return ConvModule(
            in_channels,
            self._lateral_channels(slow_channels),
            kernel_size=(self.fusion_kernel, 1, 1),
            stride=(self.speed_ratio, 1, 1),
            padding=((self.fusion_kernel - 1) // 2, 0, 0),
            norm_cfg=self.norm_cfg if self.lateral_norm else None,
            act_cfg=self.act_cfg if self.lateral_norm else None,
        )

    def _inflatable_modules(self):
        # lateral convs have no counterpart in a 2D network
        for name, module in super()._inflatable_modules():
            if "lateral" not in name:
                yield name, module

    def init_weights(self, pretrained: str | None = None) -> dict | None:
        report = super().init_weights(pretrained)
        for name in ["conv1_lateral"] + self.lateral_connections:
            if hasattr(self, name):
                for m in getattr(self, name).modules():
                    if isinstance(m, nn.Conv3d):
                        kaiming_init(m)
        return report

    def _frozen_modules(self) -> list[nn.Module]:
        modules = super()._frozen_modules()
        if self.lateral and self.frozen_stages >= 0:
            if hasattr(self, "conv1_lateral"):
                modules.append(self.conv1_lateral)
            for i in range(1, min(self.frozen_stages, len(self.lateral_connections)) + 1):
                modules.append(getattr(self, self.lateral_connections[i - 1]))
        return modules


class ResNet3dSlowOnly(ResNet3dPathway):
    """The slow pathway alone (SlowOnly): no lateral connections, no temporal pooling, stem kernel 1x7x7.

    Arguments as :class:`ResNet3d`, with SlowOnly's defaults.
    """

    def __init__(
        self,
        conv1_kernel: Sequence[int] = (1, 7, 7),
        conv1_stride_t: int = 1,
        pool1_stride_t: int = 1,
        inflate: Sequence[int] = (0, 0, 1, 1),
        with_pool2: bool = False,
        lateral: bool = False,
        **kwargs,
    ):
        if lateral:
            raise ConfigError("ResNet3dSlowOnly has no lateral connections; set lateral=False")
        super().__init__(
            lateral=False,
            conv1_kernel=conv1_kernel,
            conv1_stride_t=conv1_stride_t,
            pool1_stride_t=pool1_stride_t,
            inflate=inflate,
            with_pool2=with_pool2,
            **kwargs,
        )


def slow_frame_indices(num_frames: int, resample_rate: int, mode: str = "stride") -> torch.Tensor:
    """Frames the slow pathway takes from a clip of ``num_frames``.

    ``'stride'`` (mmaction2): every ``resample_rate``-th frame, ``num_frames // resample_rate`` of them (what
    mmaction2's nearest-neighbour ``interpolate`` picks). ``'linspace'`` (PyTorchVideo and PySlowFast):
    ``linspace(0, num_frames - 1, num_frames // resample_rate)`` rounded down.
    """
    count = num_frames // resample_rate
    if mode == "stride":
        return torch.arange(count) * resample_rate
    if mode == "linspace":
        return torch.linspace(0, num_frames - 1, count).long()
    raise ConfigError(f"slow_frame_sampling must be 'stride' or 'linspace', got '{mode}'")


class ResNet3dSlowFast(nn.Module):
    """SlowFast backbone: returns ``(slow, fast)`` features.

    Args:
        pretrained: path of a whole-backbone 3D checkpoint loaded by :meth:`init_weights`.
        resample_rate: the slow pathway takes one frame in ``resample_rate`` of the input (tau in the paper).
        speed_ratio: the fast pathway runs ``speed_ratio`` times the slow frame rate (alpha in the paper).
        channel_ratio: the fast pathway has ``1 / channel_ratio`` of the slow channels (beta = 1 / channel_ratio).
        slow_pathway: keyword arguments of the slow :class:`ResNet3dPathway` (``type='resnet3d'``).
        fast_pathway: keyword arguments of the fast :class:`ResNet3dPathway`.
        slow_frame_sampling: 'stride' (mmaction2) or 'linspace' (PyTorchVideo, PySlowFast), see
            :func:`slow_frame_indices`.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        resample_rate: int = 8,
        speed_ratio: int = 8,
        channel_ratio: int = 8,
        slow_pathway: dict | None = None,
        fast_pathway: dict | None = None,
        slow_frame_sampling: str = "stride",
    ):
        super().__init__()
        if slow_pathway is None:
            slow_pathway = dict(
                type="resnet3d",
                depth=50,
                pretrained=None,
                lateral=True,
                conv1_kernel=(1, 7, 7),
                dilations=(1, 1, 1, 1),
                conv1_stride_t=1,
                pool1_stride_t=1,
                inflate=(0, 0, 1, 1),
            )
        if fast_pathway is None:
            fast_pathway = dict(
                type="resnet3d",
                depth=50,
                pretrained=None,
                lateral=False,
                base_channels=8,
                conv1_kernel=(5, 7, 7),
                conv1_stride_t=1,
                pool1_stride_t=1,
            )
        if resample_rate % speed_ratio != 0:
            raise ConfigError(f"resample_rate ({resample_rate}) must be a multiple of speed_ratio ({speed_ratio})")
        slow_frame_indices(speed_ratio, 1, slow_frame_sampling)  # validates the mode name
        self.pretrained = pretrained
        self.resample_rate = resample_rate
        self.speed_ratio = speed_ratio
        self.channel_ratio = channel_ratio
        self.slow_frame_sampling = slow_frame_sampling

        slow_kwargs = dict(slow_pathway)
        if slow_kwargs.get("lateral", False):
            slow_kwargs["speed_ratio"] = speed_ratio
            slow_kwargs["channel_ratio"] = channel_ratio
        self.slow_path = self._build_pathway(slow_kwargs, "slow_pathway")
        self.fast_path = self._build_pathway(dict(fast_pathway), "fast_pathway")
        if len(self.slow_path.res_layers) != len(self.fast_path.res_layers):
            raise ConfigError("slow_pathway and fast_pathway must have the same number of stages")
        self.out_channels = (self.slow_path.feat_dim, self.fast_path.feat_dim)

    @staticmethod
    def _build_pathway(kwargs: dict, where: str) -> ResNet3dPathway:
        pathway_type = kwargs.pop("type", "resnet3d")
        if pathway_type not in ("resnet3d", "ResNet3dPathway"):
            raise ConfigError(f"{where}: unknown pathway type '{pathway_type}'; the known one is 'resnet3d'")
        if take_init_cfg(kwargs, ResNet3dPathway, where) is not None:  # a prefix other than 'backbone.'
            raise ConfigError(
                f"{where}.init_cfg: a pathway loads its Pretrained checkpoint as 'pretrained' does; drop 'prefix'"
            )
        check_kwargs(ResNet3dPathway, kwargs, where)
        return ResNet3dPathway(**kwargs)

    def init_weights(self, pretrained: str | None = None) -> dict | None:
        """Initialise both pathways (inflating a 2D checkpoint where a pathway asks for it), or load ``pretrained``."""
        if pretrained:
            self.pretrained = pretrained
        if self.pretrained is None:
            fast_report = self.fast_path.init_weights()  # fast first: the order draws of the random init
            return {"slow_path": self.slow_path.init_weights(), "fast_path": fast_report}

        path = local_checkpoint_path(self.pretrained, f"{type(self).__name__}.pretrained")
        state = read_state_dict(path)
        conv1 = state.get("conv1.weight", state.get("backbone.conv1.weight"))
        if conv1 is not None and conv1.dim() == 4:
            raise CheckpointError(
                f"{type(self).__name__}.pretrained={path} holds a 2D ResNet (conv1.weight "
                f"{list(conv1.shape)}): a 2D network is inflated into a pathway, so set it as "
                "slow_pathway=dict(..., pretrained=..., pretrained2d=True)"
            )
        load_checkpoint(self, state, strict=True, strip_prefix="backbone.", source=str(path))
        return None

    @property
    def min_frames(self) -> int:
        return self.resample_rate

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N, C, T, H, W] -> (slow [N, C_slow, T / tau, H / 32, W / 32], fast [N, C_fast, T * alpha / tau, ...])."""
        check_video_input(x, self.slow_path.in_channels, "ResNet3dSlowFast", min_frames=self.resample_rate)
        num_frames = x.shape[2]
        if num_frames % self.resample_rate:
            # otherwise the slow and fast pathways end with different frame counts and the lateral concat fails
            raise InputError(
                f"ResNet3dSlowFast: the clip has {num_frames} frames, but T must be a multiple of resample_rate="
                f"{self.resample_rate} (e.g. {num_frames // self.resample_rate * self.resample_rate} or "
                f"{(num_frames // self.resample_rate + 1) * self.resample_rate})"
            )
        slow_index = slow_frame_indices(num_frames, self.resample_rate, self.slow_frame_sampling)
        if self.slow_frame_sampling == "stride":
            x_slow = x[:, :, :: self.resample_rate][:, :, : slow_index.numel()]
        else:
            x_slow = x.index_select(2, slow_index.to(x.device))
        fast_stride = self.resample_rate // self.speed_ratio
        x_fast = x[:, :, ::fast_stride][:, :, : num_frames // fast_stride]

        x_slow = self.slow_path.forward_stem(x_slow, pool=True)
        x_fast = self.fast_path.forward_stem(x_fast, pool=True)
        if self.slow_path.lateral and hasattr(self.slow_path, "conv1_lateral"):
            x_slow = torch.cat((x_slow, self.slow_path.conv1_lateral(x_fast)), dim=1)

        for i, layer_name in enumerate(self.slow_path.res_layers):
            x_slow = getattr(self.slow_path, layer_name)(x_slow)
            x_fast = getattr(self.fast_path, layer_name)(x_fast)
            lateral_name = f"{layer_name}_lateral"
            if (
                self.slow_path.lateral
                and i != len(self.slow_path.res_layers) - 1
                and hasattr(self.slow_path, lateral_name)
            ):
                x_slow = torch.cat((x_slow, getattr(self.slow_path, lateral_name)(x_fast)), dim=1)
        return x_slow, x_fast
