"""The first conv of a video backbone, run with several output frames per oneDNN call.

A video stem has too few channels for oneDNN's vector kernels. SlowFast's fast pathway stem maps 3 channels to 8
with a 5x7x7 kernel: 8 output channels fill half an AVX-512 register in fp32, and 3 input channels leave AMX tiles
almost empty in bf16: on an AMX CPU that one conv took an eighth of the fused fp32 SlowFast's time and, slower in
bf16 than in fp32, over a third of the fused bf16 one (figures: benchmarks/README.md, 'Measurements behind the code').

Folding ``G`` consecutive output frames into the output channels gives oneDNN a shape it handles well, at the cost
of ``(kt + G - 1) / kt`` times the multiply-adds (the folded kernel is zero where an input frame lies outside an
output frame's window):

- **fp32, 3D fold**: one conv3d with kernel ``(kt + G - 1, kh, kw)``, temporal stride ``G`` and ``G * C_out``
  output channels. With G = 2 the fast stem took about a third less time.
- **bf16, 2D fold**: the ``kt + G - 1`` input frames of each group of ``G`` output frames are stacked into channels,
  ``[N * T / G, C_in * (kt + G - 1), H, W]``, and one conv2d computes ``G * C_out`` channels. With G = 4 the fast
  stem, stacking included, took about a fifth of its plain bf16 time. The stacking also casts to bf16 and reads any
  input layout, so the inference wrapper hands the stem the caller's float32 clip as it is (no layout conversion). Clips
  of up to 256 channel planes are stacked by one selection GEMM instead of copies, and all groups then run as one
  grouped conv2d (:meth:`FoldedStemConv._forward_2d_grouped`).

A stem whose temporal kernel is 1 (the slow pathway's 1x7x7) becomes a plain conv2d over ``[N * T, C_in, H, W]``
in bf16 (G = 1) and stays a plain conv3d in fp32. Outputs equal the plain conv's to float rounding.

Which fold is faster depends on the CPU, so a stem with a temporal kernel tries both (:func:`stem_routes_for`) on the
first clip of each size and keeps the faster, as the Winograd convs do: on an AVX-512 BF16 CPU without AMX (Zen 4) the
3D fold won in bf16, on an AMX CPU the 2D fold (figures: benchmarks/README.md, 'Measurements behind the code').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lateral.inference.onednn import OneDnnConv, weight_version
from lateral.inference.scratch import scratch
from lateral.inference.stem_fold import (
    MAX_STEM_CHANNELS,
    STEM_FOLD,
    fold_stem_weight,
    framewise_pool_args,
    stack_stem_frames,
    unfold_stem_frames,
)
from lateral.inference.winograd import fastest_route, size_class
from lateral.models.resnet3d import ResNet3d
from lateral.models.slowfast import ResNet3dSlowFast

__all__ = ["FoldedStemConv", "stem_fold_for", "stem_routes_for", "use_folded_stems"]

FP32_FOLD = 2  # measured best of 1, 2, 4, 8 for the 3D fold
BF16_FOLD = STEM_FOLD  # the 2D fold, as in training (measured best of 2, 4, 8, 16)
# Clips with at most this many channel planes (C_in * T) are stacked by a selection GEMM; its cost grows with the
# square of T, so longer clips are stacked by copies.
MATMUL_STACK_MAX_PLANES = 256


def stem_fold_for(conv: OneDnnConv, dtype: torch.dtype) -> tuple[str, int] | None:
    """(mode, G) for a stem conv run in ``dtype``, or None if the conv is not a stem this module handles.

    Handled: 3D convs with at most 4 input channels, no groups or dilation, temporal stride 1.
    """
    if len(conv.kernel_size) != 3 or conv.in_channels > MAX_STEM_CHANNELS or conv.groups != 1:
        return None
    if any(d != 1 for d in conv.dilation) or conv.stride[0] != 1:
        return None
    kernel_t = conv.kernel_size[0]
    if dtype == torch.bfloat16:
        return "2d", BF16_FOLD if kernel_t > 1 else 1
    return "3d", FP32_FOLD if kernel_t > 1 else 1


def stem_routes_for(conv: OneDnnConv, dtype: torch.dtype) -> list[tuple[str, int]]:
    """The (mode, G) routes a stem conv run in ``dtype`` may take, the default (:func:`stem_fold_for`) first; [] if
    the conv is not a stem this module handles. Stems with a temporal kernel get both folds, to be timed."""
    default = stem_fold_for(conv, dtype)
    if default is None:
        return []
    if conv.kernel_size[0] == 1:
        return [default]
    other = ("3d", FP32_FOLD) if default[0] == "2d" else ("2d", BF16_FOLD)
    return [default, other]


class FoldedStemConv(OneDnnConv):
    """A stem conv3d computed ``fold`` output frames at a time (see the module docstring); same weights and outputs.

    The state dict is the conv's own (``weight``, ``bias``); the folded weight is derived on the first call and
    redone if the weight changes.

    Args:
        conv: the BatchNorm-folded stem, as a :class:`OneDnnConv` (its fused ReLU is kept).
        mode: '3d' (output frames folded into channels of a strided conv3d) or '2d' (input frames stacked into
            channels of a conv2d).
        fold: output frames per group, ``G``.
        routes: (mode, fold) pairs to time against each other on the first clip of each size class (the fastest is
            kept in ``routes_chosen`` and used for that class); None or one pair: always ``(mode, fold)``.

    ``mode`` and ``fold`` are the route of the last call, for display: each call passes its route down as an argument,
    so threads that run clips of different size classes through one copy do not mix routes.
    """

    def __init__(self, conv: OneDnnConv, mode: str, fold: int, routes: list[tuple[str, int]] | None = None):
        super().__init__(conv, relu=conv.relu)
        # a route may arrive as a list (a JSON config): unpacked, as a tuple it keys routes_chosen and the caches
        self.routes = [(mode, fold)] if not routes else [(route_mode, route_fold) for route_mode, route_fold in routes]
        for route_mode, route_fold in self.routes:
            if route_mode not in ("2d", "3d"):
                raise ValueError(f"mode must be '2d' or '3d', got {route_mode!r}")
            if route_fold < 1:
                raise ValueError(f"fold must be >= 1, got {route_fold}")
        self.mode, self.fold = mode, fold
        self.routes_chosen: dict[tuple, tuple[str, int]] = {}  # size class -> (mode, fold)
        self.pool: dict | None = None  # max-pool over H, W applied before frames are unfolded (see fuse_pool)
        self._folded: dict[tuple, tuple] = {}  # route -> (dtype and versions, weight, bias)
        self._grouped: dict[tuple, tuple] = {}  # route -> (groups, dtype and versions, the folded ones repeated)
        self._selection: tuple[tuple, torch.Tensor] | None = None  # stacking matrix of the 2D fold

    def fuse_pool(self, pool: nn.MaxPool3d) -> bool:
        """Take over ``pool`` (which follows this conv) if it pools each frame on its own; return whether it did.

        Pooling the folded output, whose ``G * C_out`` channels fill a vector register, and unfolding a quarter as
        many pixels afterwards took under a third of the time of the bf16 fast stem's plain 3x3 pool.
        """
        pool_args = framewise_pool_args(pool)
        if pool_args is None:
            return False
        self.pool = pool_args
        return True

    def _pool2d(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pool is None else F.max_pool2d(x, **self.pool)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_folded"], state["_grouped"], state["_selection"] = {}, {}, None
        return state

    def folded_weight(self, route: tuple[str, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight and bias of the folded conv for ``route`` (default: ``(mode, fold)``): ``[G * C_out, C_in,
        kt + G - 1, kh, kw]`` channels-last-3d ('3d') or ``[G * C_out, C_in * (kt + G - 1), kh, kw]`` channels-last
        ('2d'), and the bias repeated G times."""
        route = (self.mode, self.fold) if route is None else route
        version = (weight_version(self.weight), weight_version(self.bias))
        cached = self._folded.get(route)
        if cached is None or cached[0] != version:
            mode, fold = route
            out_channels, in_channels, kernel_t, kernel_h, kernel_w = self.weight.shape
            window = kernel_t + fold - 1
            weight = fold_stem_weight(self.weight.detach(), fold)  # [G * C_out, C_in * window, kh, kw]
            if mode == "2d":
                weight = weight.contiguous(memory_format=torch.channels_last)
            else:
                weight = weight.reshape(fold * out_channels, in_channels, window, kernel_h, kernel_w)
                weight = weight.contiguous(memory_format=torch.channels_last_3d)
            cached = self._folded[route] = (version, weight, self.bias.detach().repeat(fold))
        return cached[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C_in, T, H, W], any float dtype and memory layout -> [N, C_out, T', H', W'] channels-last-3d in the
        weight's dtype."""
        route = (self.mode, self.fold)
        if len(self.routes) > 1:
            key = size_class(x)
            if key not in self.routes_chosen:
                # timed on one sample, as the Winograd routes are
                self.routes_chosen[key] = fastest_route(self.routes, lambda candidate: self._run(x[:1], candidate))
            route = self.routes_chosen[key]
        return self._run(x, route)

    def _run(self, x: torch.Tensor, route: tuple[str, int]) -> torch.Tensor:
        self.mode, self.fold = mode, fold = route  # for display only: the route goes down as an argument
        frames_out = x.shape[2] + 2 * self.padding[0] - self.kernel_size[0] + 1
        if mode == "3d":
            x = x.to(self.weight.dtype)
            if fold == 1 or frames_out % fold:
                out = super().forward(x.contiguous(memory_format=torch.channels_last_3d))
                if self.pool is None:
                    return out
                pool = self.pool
                return F.max_pool3d(
                    out,
                    (1, *pool["kernel_size"]),
                    (1, *pool["stride"]),
                    (0, *pool["padding"]),
                    ceil_mode=pool["ceil_mode"],
                )
            return self._forward_3d(x, frames_out, fold)
        return self._forward_2d(x, frames_out, fold)

    def _forward_3d(self, x: torch.Tensor, frames_out: int, fold: int) -> torch.Tensor:
        weight, bias = self.folded_weight(("3d", fold))
        stride = [fold, *self.stride[1:]]
        out = torch.ops.mkldnn._convolution_pointwise(
            x.contiguous(memory_format=torch.channels_last_3d),
            weight,
            bias,
            self.padding,
            stride,
            self.dilation,
            1,
            self.unary_op,
            [],
            "",
        )  # [N, G * C_out, T' / G, H', W'] channels-last-3d, i.e. [N * T' / G, G * C_out, H', W'] channels-last
        batch, channels, groups, height, width = out.shape
        out = self._pool2d(out.permute(0, 2, 1, 3, 4).reshape(batch * groups, channels, height, width))
        return unfold_stem_frames(out, batch, self.out_channels, fold, frames_out, channels_last=True)

    def _forward_2d(self, x: torch.Tensor, frames_out: int, fold: int) -> torch.Tensor:
        # with G = 1 (a 1xkxk stem) the copies only move frames into the batch: the GEMM measured slower there
        if fold > 1 and x.shape[1] * x.shape[2] <= MATMUL_STACK_MAX_PLANES:
            return self._forward_2d_grouped(x, frames_out, fold)
        weight, bias = self.folded_weight(("2d", fold))
        # cast first: the stacking copies then move half the bytes in bf16
        stacked = stack_stem_frames(x.to(self.weight.dtype), self.kernel_size[0], self.padding[0], fold)
        out = torch.ops.mkldnn._convolution_pointwise(
            stacked,
            weight,
            bias,
            self.padding[1:],
            self.stride[1:],
            self.dilation[1:],
            1,
            self.unary_op,
            [],
            "",
        )  # [N * T' / G, G * C_out, H', W'] channels-last
        return unfold_stem_frames(
            self._pool2d(out), x.shape[0], self.out_channels, fold, frames_out, channels_last=True
        )

    def _forward_2d_grouped(self, x: torch.Tensor, frames_out: int, fold: int) -> torch.Tensor:
        """The 2D fold with every group's frames stacked by one GEMM and every group convolved by one grouped conv.

        Stacking by copies runs aten's copy kernels on 3-channel interleaves at 1-2 GB/s; here the clip's
        ``C * T`` planes, read transposed (pixel-major), are multiplied by a 0/1 selection matrix that places frame
        ``g * G + f - pad_t`` of channel c at column (g, c, f), zero outside the clip. Each output is one product
        with 1 plus zeros, so the stack is exact; but a NaN or inf anywhere in a pixel's frames spreads to all of
        that pixel's groups (0 * inf is NaN). The result, [N, H, W, groups * C * window], is channels-last for a
        conv2d with ``groups`` groups, which computes [N, groups * G * C_out, H', W'] in one call. For the bf16
        fast stem of SlowFast the stack took a quarter of the time of copying planes, and the whole stem a sixth
        less (figures: benchmarks/README.md, 'Measurements behind the code').
        """
        batch, channels, frames, height, width = x.shape
        groups = -(-frames_out // fold)
        dtype = self.weight.dtype
        planes = scratch("stem.planes", (batch, channels, frames, height, width), dtype)
        planes.copy_(x)  # casts, and reads any layout
        selection = self.selection(channels, frames, groups, fold)
        stacked = scratch("stem.stacked", (batch, height * width, selection.shape[1]), dtype)
        for n in range(batch):
            torch.mm(planes[n].view(channels * frames, height * width).t(), selection, out=stacked[n])
        stacked = stacked.view(batch, height, width, -1).permute(0, 3, 1, 2)  # channels-last
        weight, bias = self.grouped_weight(groups, fold)
        out = torch.ops.mkldnn._convolution_pointwise(
            stacked,
            weight,
            bias,
            self.padding[1:],
            self.stride[1:],
            self.dilation[1:],
            groups,
            self.unary_op,
            [],
            "",
        )
        out = self._pool2d(out)  # [N, groups * G * C_out, H', W'] channels-last: memory [N, H', W', groups, G, C_out]
        out_h, out_w = out.shape[-2:]
        frames_first = out.permute(0, 2, 3, 1).view(batch, out_h, out_w, groups * fold, self.out_channels)
        result = out.new_empty((batch, frames_out, out_h, out_w, self.out_channels))
        result.copy_(frames_first.permute(0, 3, 1, 2, 4)[:, :frames_out])
        return result.permute(0, 4, 1, 2, 3)  # [N, C_out, T', H', W'] channels-last-3d

    def selection(self, channels: int, frames: int, groups: int, fold: int) -> torch.Tensor:
        """[C * T, groups * C * window] 0/1 matrix in the weight's dtype: column ``(g * C + c) * window + f`` has its
        1 in row ``c * T + g * G + f - pad_t`` when that frame is inside the clip (kept for the last clip shape)."""
        key = (channels, frames, groups, fold, self.weight.dtype)
        cached = self._selection
        if cached is None or cached[0] != key:
            window, pad_t = self.kernel_size[0] + fold - 1, self.padding[0]
            selection = torch.zeros(channels, frames, groups, channels, window)
            for g in range(groups):
                for f in range(window):
                    frame = g * fold + f - pad_t
                    if 0 <= frame < frames:
                        selection[torch.arange(channels), frame, g, torch.arange(channels), f] = 1
            matrix = selection.view(channels * frames, groups * channels * window).to(self.weight.dtype)
            cached = self._selection = (key, matrix)
        return cached[1]

    def grouped_weight(self, groups: int, fold: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The 2D fold's weight and bias for ``fold`` repeated for ``groups`` conv groups (channels-last)."""
        weight, bias = self.folded_weight(("2d", fold))
        route = ("2d", fold)
        version = (groups, weight_version(self.weight), weight_version(self.bias))
        cached = self._grouped.get(route)
        if cached is None or cached[0] != version:
            repeated = weight.repeat(groups, 1, 1, 1).contiguous(memory_format=torch.channels_last)
            cached = self._grouped[route] = (version, repeated, bias.repeat(groups))
        return cached[1:]

    def extra_repr(self) -> str:
        pool = "" if self.pool is None else f", max_pool={self.pool}"
        chosen = ", ".join(
            f"{key[0]} frames of ~2^{key[1]} px: {mode} fold {fold}" for key, (mode, fold) in self.routes_chosen.items()
        )
        return f"{super().extra_repr()}, mode={self.mode}, fold={self.fold}{pool}" + (f" ({chosen})" if chosen else "")


def use_folded_stems(module: nn.Module, dtype: torch.dtype) -> bool:
    """Replace, in place, the oneDNN stem conv of every ResNet3d pathway in ``module`` by a :class:`FoldedStemConv`,
    which also takes over the pathway's frame-wise max-pool (the pool becomes ``nn.Identity``).

    Returns:
        True if ``module`` is a backbone whose forward passes the raw clip only to stems that are all folded now
        (a ``ResNet3d`` with the stock forward, or ``ResNet3dSlowFast``), i.e. the input needs no layout or dtype
        conversion before it.
    """
    pathways = [m for m in module.modules() if isinstance(m, ResNet3d) and hasattr(m, "conv1")]
    stems = [pathway.conv1 for pathway in pathways]
    for pathway, stem in zip(pathways, stems):
        conv = getattr(stem, "conv", None)
        if type(conv) is not OneDnnConv or getattr(stem, "activate", None) is not None:
            continue
        routes = stem_routes_for(conv, dtype)
        if not routes:
            continue
        stem.conv = folded = FoldedStemConv(conv, *routes[0], routes=routes)
        pool = getattr(pathway, "maxpool", None)
        if pathway.with_pool1 and isinstance(pool, nn.MaxPool3d) and folded.fuse_pool(pool):
            pathway.maxpool = nn.Identity()
    raw_input_ok = isinstance(module, ResNet3dSlowFast) or (
        isinstance(module, ResNet3d) and type(module).forward is ResNet3d.forward
    )
    return bool(stems) and raw_input_ok and all(isinstance(getattr(s, "conv", None), FoldedStemConv) for s in stems)
