"""Winograd F(2, 3) and F(4, 3) over time for the wide fp32 3x1x1 convs of the inference copy.

SlowFast's slow pathway starts every res4 and res5 bottleneck with a 3x1x1 conv (1024 -> 256 and 2048 -> 512
channels on 4 frames): 7.4 of its 21.8 GMAC. Over time such a conv is a 1D convolution with a kernel of 3 whose
"scalars" are C_in x C_out matrices, so the 1D Winograd algorithm applies as it is: a tile of ``m`` output frames
comes from ``m + 2`` input frames, transformed by ``B^T``; each of the ``m + 2`` transformed frames is multiplied
by its transformed weight ``G g`` (one batched GEMM over all pixels), and ``A^T`` gives the ``m`` output frames.
That is ``(m + 2) / m`` GEMMs per output frame instead of 3: 2 for F(2, 3), 1.5 for F(4, 3), so 2x fewer
multiply-adds with F(4, 3). The transforms are GEMMs with 4-6 rows over whole frames, i.e. memory passes.

On an AVX-512 CPU F(4, 3) beat oneDNN's direct conv on the slow pathway's wide convs, and lost on the fast pathway's
thin ones (64 output channels or fewer, 32 frames), so convs narrower than ``MIN_CHANNELS`` are not tried (figures:
benchmarks/README.md, 'Measurements behind the code'). Accuracy in float32 against oneDNN's direct conv on random data:
1e-6 (F(2, 3)) and 2e-6 (F(4, 3)) of the largest output.

:class:`TemporalWinogradConv` times the routes per size class like the 3x3
:class:`~lateral.inference.winograd.WinogradConv`.
"""

from __future__ import annotations

import functools

import torch

from lateral.inference.onednn import OneDnnConv
from lateral.inference.scratch import scratch
from lateral.inference.winograd import F2X2, F4X4, MIN_CHANNELS, TileAlgorithm, WinogradConv, replace_convs

__all__ = [
    "TEMPORAL_ALGORITHMS",
    "TemporalWinogradConv",
    "temporal_winograd_eligible",
    "temporal_winograd_weight",
    "use_temporal_winograd_convs",
    "winograd_conv3x1x1",
]

# The 1D matrices of F(2x2, 3x3) and F(4x4, 3x3) are those of F(2, 3) and F(4, 3).
TEMPORAL_ALGORITHMS: dict[str, TileAlgorithm] = {"f2": F2X2, "f4": F4X4}


def temporal_winograd_weight(weight: torch.Tensor, algorithm: TileAlgorithm = F4X4) -> torch.Tensor:
    """[C_out, C_in, 3, 1, 1] -> [m + 2, C_in, C_out]: ``G g`` over the temporal taps, computed in float64."""
    if weight.dim() != 5 or tuple(weight.shape[2:]) != (3, 1, 1):
        raise ValueError(f"temporal_winograd_weight needs a [C_out, C_in, 3, 1, 1] weight, got {tuple(weight.shape)}")
    weight_t = torch.tensor(algorithm.weight_t, dtype=torch.float64)  # [a, 3]
    transformed = torch.einsum("ak,oik->aio", weight_t, weight.detach()[:, :, :, 0, 0].double())
    return transformed.to(weight.dtype).contiguous()


@functools.cache
def _transform_matrices(algorithm: TileAlgorithm, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """B^T [a, a] and A^T [m, a] (small integers, exact in float32 and bfloat16)."""
    return torch.tensor(algorithm.input_t, dtype=dtype), torch.tensor(algorithm.output_t, dtype=dtype)


def winograd_conv3x1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    algorithm: TileAlgorithm = F4X4,
) -> torch.Tensor:
    """Temporal convolution with kernel 3, stride 1, zero padding 1, then + bias and ReLU, as given.

    Args:
        x: [N, T, P, C_in] float32 (or bfloat16), contiguous (a channels-last-3d clip permuted, P = H * W pixels).
        weight: [m + 2, C_in, C_out] from :func:`temporal_winograd_weight` with the same ``algorithm``.
        bias: [C_out] or None.

    Returns:
        A new [N, T, P, C_out] contiguous tensor in x's dtype. T need not be a multiple of m: the last tile's missing
        input frames are zeros and its extra output frames are dropped.
    """
    if x.dim() != 4 or not x.is_contiguous():
        raise ValueError(
            f"x must be a contiguous [N, T, P, C_in] tensor, got shape {tuple(x.shape)} with strides {x.stride()}"
        )
    batch, frames, pixels, in_channels = x.shape
    m, size = algorithm.outputs, algorithm.size
    if weight.shape[0] != size or weight.shape[1] != in_channels:
        raise ValueError(
            f"temporal winograd weight {tuple(weight.shape)} does not fit an input with {in_channels} channels and "
            f"F({m}, 3) ({size} taps)"
        )
    out_channels = weight.shape[2]
    input_t, output_t = _transform_matrices(algorithm, x.dtype)
    tiles = -(-frames // m)
    clip = x.view(batch, frames, pixels * in_channels)
    transformed = scratch("temporal_winograd.tiles", (size, batch, tiles, pixels * in_channels), x.dtype)
    for n in range(batch):
        for tile in range(tiles):
            first = tile * m - 1  # input frame under the tile's first tap; outside the clip means zero padding
            lo, hi = max(first, 0), min(first + size, frames)
            torch.mm(input_t[:, lo - first : hi - first], clip[n, lo:hi], out=transformed[:, n, tile])
    products = scratch("temporal_winograd.products", (size, batch * tiles * pixels, out_channels), x.dtype)
    torch.bmm(transformed.view(size, batch * tiles * pixels, in_channels), weight, out=products)
    if bias is not None:
        products[1].add_(bias)  # column 1 of A^T is all ones: product 1 enters every output frame once
    per_tile = products.view(size, batch, tiles, pixels * out_channels)
    out = torch.empty(batch, frames, pixels, out_channels, dtype=x.dtype)
    for n in range(batch):
        for tile in range(tiles):
            count = min(m, frames - tile * m)  # output frames of this tile inside the clip
            target = out[n, tile * m : tile * m + count].view(count, -1)
            torch.mm(output_t[:count], per_tile[:, n, tile], out=target)
    if relu:
        out.clamp_(min=0)
    return out


class TemporalWinogradConv(WinogradConv):
    """A fp32 3x1x1 conv (stride 1, padding 1 in time) that runs as :func:`winograd_conv3x1x1` where that is
    measured faster: routes 'direct', 'f2' (F(2, 3)) and 'f4' (F(4, 3)), timed per size class as in
    :class:`WinogradConv`, whose ``mode`` and ``routes`` it shares. Same parameters and state-dict names as the conv
    it replaces."""

    ALGORITHMS = TEMPORAL_ALGORITHMS
    ROUTES = ("direct", *TEMPORAL_ALGORITHMS)
    WEIGHT_TRANSFORM = staticmethod(temporal_winograd_weight)

    def _forward_winograd(
        self,
        x: torch.Tensor,
        algorithm: str,
        residual: torch.Tensor | None = None,
        relu: bool | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if residual is not None or out is not None:
            raise ValueError("TemporalWinogradConv adds no shortcut: use the direct route for conv + shortcut")
        batch, channels, frames, height, width = x.shape
        result = winograd_conv3x1x1(
            x.permute(0, 2, 3, 4, 1).view(batch, frames, height * width, channels),
            self.transformed_weight(algorithm),
            self.bias,
            self.relu if relu is None else relu,
            self.ALGORITHMS[algorithm],
        )
        return result.view(batch, frames, height, width, -1).permute(0, 4, 1, 2, 3)

    def _winograd_applies(self, *tensors: torch.Tensor) -> bool:
        return tensors[0].dim() == 5 and super()._winograd_applies(*tensors)

    def add(self, x: torch.Tensor, other: torch.Tensor, relu: bool = False, inplace: bool = False) -> torch.Tensor:
        """``conv(x) + other``, always by the direct conv (no block ends in a 3x1x1 conv)."""
        return OneDnnConv.add(self, x, other, relu=relu, inplace=inplace)


def temporal_winograd_eligible(conv: OneDnnConv) -> bool:
    """A plain 3x1x1 conv3d, stride 1, temporal padding 1, no dilation or groups, at least MIN_CHANNELS wide."""
    return (
        type(conv) is OneDnnConv
        and len(conv.kernel_size) == 3
        and list(conv.kernel_size) == [3, 1, 1]
        and list(conv.stride) == [1, 1, 1]
        and list(conv.padding) == [1, 0, 0]
        and list(conv.dilation) == [1, 1, 1]
        and conv.groups == 1
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )


def use_temporal_winograd_convs(model: torch.nn.Module) -> int:
    """Replace, in place, every eligible :class:`OneDnnConv` of ``model`` by a :class:`TemporalWinogradConv`."""
    return replace_convs(model, temporal_winograd_eligible, TemporalWinogradConv)
