"""Winograd convolutions F(2x2, 3x3) and F(4x4, 3x3) for the wide fp32 3x3 convs of the inference copy.

F(m x m, 3 x 3) computes an m x m block of outputs from an (m + 2) x (m + 2) input tile ``d``: ``B^T d B`` per tile,
``G g G^T`` per weight (once per conv), one matrix multiplication (tiles x C_in) @ (C_in x C_out) per tile position,
then ``A^T p A`` (Lavin & Gray, 2016). Per output and channel pair that is 4 (m = 2) or 2.25 (m = 4) multiply-adds
instead of 9. Both transforms run as small GEMMs over all tiles of a band at once, and the tiles of a band stay in
per-thread scratch memory that is kept between calls, so a large map pays no page faults on fresh buffers several
times its size.

Accuracy in float32, against a float64 reference on random data: direct 3e-7, F(2x2) 6e-7, F(4x4) 1e-5 (relative to
the largest output). Through whole networks the difference to the direct route vanishes in the other rounding: the
golden SlowFast logits stay within 4e-6, and the trained FPN-50 golden levels within 6e-5 absolute (4e-6
relative), as with the direct convs.

Whether a route beats oneDNN's direct convolution depends on the CPU (it needs a fast fp32 GEMM) and on the shape, so
:class:`WinogradConv` times all three on the first input of each shape and keeps the fastest. On an AVX-512 CPU
the Winograd routes won on FPN-50's convs of 128 channels and more and lost at 64 channels, so narrower convs are
not tried (figures: benchmarks/README.md, 'Measurements behind the code').
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from lateral.inference.onednn import OneDnnConv, weight_version
from lateral.inference.scratch import scratch

__all__ = [
    "ALGORITHMS",
    "F2X2",
    "F4X4",
    "MIN_CHANNELS",
    "TileAlgorithm",
    "WinogradConv",
    "fastest_route",
    "replace_convs",
    "route_summary",
    "size_class",
    "use_winograd_convs",
    "winograd_conv3x3",
    "winograd_weight",
]

# Narrower convs make GEMMs too thin to win back the transforms (measured here: 64 channels 1.4x slower).
MIN_CHANNELS = 128
# A band holds about this many floats of transformed input tiles.
_BAND_FLOATS = 1 << 20
# The measured route must be this much faster than the direct conv to be taken; each route runs this many times
# (alternately, best time kept) on the first input of a size class.
_MIN_GAIN = 1.05
_MEASURE_ROUNDS = 3

_RouteT = TypeVar("_RouteT", bound=Hashable)


@dataclass(frozen=True)
class TileAlgorithm:
    """Winograd F(m x m, 3 x 3): ``m x m`` outputs from an ``(m + 2) x (m + 2)`` input tile (Lavin & Gray, 2016)."""

    outputs: int  # m
    input_t: tuple  # B^T, [m + 2, m + 2]
    weight_t: tuple  # G, [m + 2, 3]
    output_t: tuple  # A^T, [m, m + 2]; its column 1 is all ones (the bias goes into that product)

    @property
    def size(self) -> int:
        return self.outputs + 2

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kron(B^T, B^T) [a*a, a*a] and kron(A^T, A^T) [m*m, a*a] in float32, a = m + 2."""
        input_t = torch.tensor(self.input_t, dtype=torch.float64)
        output_t = torch.tensor(self.output_t, dtype=torch.float64)
        return torch.kron(input_t, input_t).float(), torch.kron(output_t, output_t).float()


F2X2 = TileAlgorithm(
    outputs=2,
    input_t=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
    weight_t=((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
    output_t=((1, 1, 1, 0), (0, 1, -1, -1)),
)
F4X4 = TileAlgorithm(
    outputs=4,
    input_t=(
        (4, 0, -5, 0, 1, 0),
        (0, -4, -4, 1, 1, 0),
        (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0),
        (0, 2, -1, -2, 1, 0),
        (0, 4, 0, -5, 0, 1),
    ),
    weight_t=(
        (1 / 4, 0, 0),
        (-1 / 6, -1 / 6, -1 / 6),
        (-1 / 6, 1 / 6, -1 / 6),
        (1 / 24, 1 / 12, 1 / 6),
        (1 / 24, -1 / 12, 1 / 6),
        (0, 0, 1),
    ),
    output_t=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
)
ALGORITHMS = {"f2x2": F2X2, "f4x4": F4X4}


def winograd_weight(weight: torch.Tensor, algorithm: TileAlgorithm = F2X2) -> torch.Tensor:
    """[C_out, C_in, 3, 3] (or [C_out, C_in, 1, 3, 3]) -> [a*a, C_in, C_out], ``G g G^T`` computed in float64."""
    if weight.dim() == 5 and weight.shape[2] == 1:
        weight = weight[:, :, 0]
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weight needs a [C_out, C_in, 3, 3] weight, got {tuple(weight.shape)}")
    out_channels, in_channels = weight.shape[:2]
    weight_t = torch.tensor(algorithm.weight_t, dtype=torch.float64)
    transformed = weight_t @ weight.detach().double() @ weight_t.T  # [C_out, C_in, a, a]
    taps = algorithm.size**2
    return transformed.permute(2, 3, 1, 0).reshape(taps, in_channels, out_channels).to(weight.dtype).contiguous()


@functools.cache
def _transform_matrices(algorithm: TileAlgorithm) -> tuple[torch.Tensor, torch.Tensor]:
    return algorithm.matrices()


def winograd_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    algorithm: TileAlgorithm = F2X2,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """3x3 convolution, stride 1, zero padding 1, then + bias, + ``residual`` and ReLU, as given.

    Args:
        x: [N, H, W, C_in] float32, contiguous (a channels-last map, permuted).
        weight: [a*a, C_in, C_out] from :func:`winograd_weight` with the same ``algorithm``.
        bias: [C_out] or None.
        residual: [N, H, W, C_out] added before the ReLU, or None.
        out: [N, H, W, C_out] contiguous to write the result into (may be ``residual`` itself: each output element
            is read from it before it is written), or None for a new tensor.

    Returns:
        ``out``, or a new [N, H, W, C_out] float32 contiguous tensor.
    """
    batch, height, width, in_channels = x.shape
    m, size = algorithm.outputs, algorithm.size
    taps = size * size
    if weight.shape[0] != taps or weight.shape[1] != in_channels:
        raise ValueError(
            f"winograd weight {tuple(weight.shape)} does not fit an input with {in_channels} channels and "
            f"F({m}x{m}, 3x3) ({taps} taps)"
        )
    out_channels = weight.shape[2]
    input_transform, output_transform = _transform_matrices(algorithm)
    tiles_h, tiles_w = -(-height // m), -(-width // m)
    padded_w = m * tiles_w + 2
    band_rows = max(1, min(tiles_h, _BAND_FLOATS // (taps * tiles_w * max(in_channels, out_channels) * batch)))
    band_tiles = batch * band_rows * tiles_w
    padded_all = scratch("winograd.padded", (batch, m * band_rows + 2, padded_w, in_channels))
    gathered_all = scratch("winograd.gathered", (taps * band_tiles * in_channels,))
    tiles_all = scratch("winograd.tiles", (taps * band_tiles * in_channels,))
    products_all = scratch("winograd.products", (taps * band_tiles * out_channels,))
    outputs_all = scratch("winograd.outputs", (m * m * band_tiles * out_channels,))
    ragged = width != m * tiles_w or height != m * tiles_h
    crop_all = scratch("winograd.crop", (m * m * band_tiles * out_channels,)) if ragged else None
    if out is None:
        out = torch.empty(batch, height, width, out_channels)
    elif tuple(out.shape) != (batch, height, width, out_channels) or not out.is_contiguous():
        raise ValueError(
            f"out must be a contiguous {[batch, height, width, out_channels]} tensor, got {list(out.shape)}"
        )
    # the scratch is shared by every conv of this thread: the zero border columns are reset for each call
    padded_all[:, :, 0].zero_()
    padded_all[:, :, width + 1 :].zero_()
    stride_n, stride_h, stride_w, _ = padded_all.stride()
    for first in range(0, tiles_h, band_rows):
        rows = min(band_rows, tiles_h - first)
        count = batch * rows * tiles_w
        visible = min(m * rows, height - m * first)  # output rows of this band inside the map
        # input rows m*first - 1 .. m*(first + rows) land on padded rows 0 .. m*rows + 1
        top, bottom = m * first - 1, m * (first + rows) + 1
        src_top, src_bottom = max(top, 0), min(bottom, height)
        padded = padded_all[:, : m * rows + 2]
        if top < 0:
            padded[:, 0].zero_()
        if bottom > height:
            padded[:, src_bottom - top :].zero_()
        padded[:, src_top - top : src_bottom - top, 1 : width + 1].copy_(x[:, src_top:src_bottom])
        # B^T d B of every tile as one GEMM: [a*a, a*a] @ [a*a, tiles * C_in], after gathering the taps
        gathered = gathered_all[: taps * count * in_channels]
        gathered.view(size, size, batch, rows, tiles_w, in_channels).copy_(
            padded.as_strided(
                (size, size, batch, rows, tiles_w, in_channels),
                (stride_h, stride_w, stride_n, m * stride_h, m * stride_w, 1),
            )
        )
        tiles = tiles_all[: taps * count * in_channels]
        torch.mm(input_transform, gathered.view(taps, -1), out=tiles.view(taps, -1))
        products = products_all[: taps * count * out_channels].view(taps, count, out_channels)
        torch.bmm(tiles.view(taps, count, in_channels), weight, out=products)
        if bias is not None:
            products[size + 1].add_(bias)  # product (1, 1) enters every output with weight +1
        # A^T p A as one GEMM: [m*m, a*a] @ [a*a, tiles * C_out]
        outputs = outputs_all[: m * m * count * out_channels]
        torch.mm(output_transform, products.view(taps, -1), out=outputs.view(m * m, -1))
        corners = outputs.view(m, m, batch, rows, tiles_w, out_channels)  # output (i, j) of every tile
        band = out[:, m * first : m * first + visible]
        shortcut = None if residual is None else residual[:, m * first : m * first + visible]
        if not ragged:
            # [N, m*R, W, C] -> a view [m, m, N, R, W', C]; rows bound now, as the loop moves on
            def as_tiles(rows_view: torch.Tensor, rows: int = rows) -> torch.Tensor:
                return rows_view.view(batch, rows, m, tiles_w, m, out_channels).permute(2, 4, 0, 1, 3, 5)

            target = as_tiles(band)
            shortcut = None if shortcut is None else as_tiles(shortcut)
        else:  # tiles that overhang the map: rearrange whole tiles into scratch, crop on the way out
            assert crop_all is not None  # allocated when ragged
            full = crop_all[: m * m * count * out_channels].view(batch, m * rows, m * tiles_w, out_channels)
            full.view(batch, rows, m, tiles_w, m, out_channels).permute(2, 4, 0, 1, 3, 5).copy_(corners)
            corners, target = full[:, :visible, :width], band
        if shortcut is not None:
            torch.add(corners, shortcut, out=target)
            if relu:
                target.clamp_(min=0)
        elif relu:
            torch.clamp(corners, min=0, out=target)
        else:
            target.copy_(corners)
    return out


class WinogradConv(OneDnnConv):
    """A fp32 3x3 (or 1x3x3) stride-1 conv that runs as :func:`winograd_conv3x3` where that is measured faster.

    The first input of each size class runs the direct conv, F(2x2, 3x3) and F(4x4, 3x3) three times each, in turn,
    on its first sample, and the fastest is kept for that class (``routes``, keyed by :func:`size_class`: batch
    sizes and detection images whose sizes differ a little do not each pay the measurement); ``mode`` 'direct',
    'f2x2' or 'f4x4' forces a route. Other dtypes
    and layouts run oneDNN as before. Same parameters and state-dict names as the conv it replaces.
    """

    ALGORITHMS = ALGORITHMS
    ROUTES = ("direct", *ALGORITHMS)
    WEIGHT_TRANSFORM = staticmethod(winograd_weight)  # (weight, TileAlgorithm) -> the weight the tiles multiply

    def __init__(self, conv: OneDnnConv):
        super().__init__(_ConvView(conv), relu=conv.relu)
        self.mode = "auto"
        self.routes: dict[tuple, str] = {}
        self._transformed: dict[str, tuple] = {}  # algorithm -> (weight version, transformed weight)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_transformed"] = {}
        return state

    def transformed_weight(self, algorithm: str) -> torch.Tensor:
        """The weight as ``WEIGHT_TRANSFORM`` gives it for ``algorithm`` (a key of ``ALGORITHMS``), made once per
        weight version."""
        version = weight_version(self.weight)
        cached = self._transformed.get(algorithm)
        if cached is None or cached[0] != version:
            cached = self._transformed[algorithm] = (
                version,
                self.WEIGHT_TRANSFORM(self.weight, self.ALGORITHMS[algorithm]),
            )
        return cached[1]

    def _forward_winograd(
        self,
        x: torch.Tensor,
        algorithm: str,
        residual: torch.Tensor | None = None,
        relu: bool | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The conv by ``algorithm`` (+ ``residual``, then ReLU: the conv's own unless ``relu`` is given), in x's
        layout, written into ``out`` if given ([N, C_out, ...] in the same layout)."""
        weight, tiles = self.transformed_weight(algorithm), self.ALGORITHMS[algorithm]
        relu = self.relu if relu is None else relu
        result = winograd_conv3x3(
            _as_maps(x),
            weight,
            self.bias,
            relu,
            tiles,
            residual=None if residual is None else _as_maps(residual),
            out=None if out is None else _as_maps(out),
        )
        if out is not None:
            return out
        batch, frames = x.shape[0], (x.shape[2] if x.dim() == 5 else None)
        if frames is None:
            return result.permute(0, 3, 1, 2)
        return result.view(batch, frames, *result.shape[1:]).permute(0, 4, 1, 2, 3)

    def _winograd_applies(self, *tensors: torch.Tensor) -> bool:
        x = tensors[0]
        layout = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return (
            x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.dim() in (4, 5)
            and all(t.dtype == torch.float32 and t.is_contiguous(memory_format=layout) for t in tensors)
        )

    def _run(self, x: torch.Tensor, route: str, other: torch.Tensor | None = None) -> torch.Tensor:
        """The conv by ``route``; with ``other``: ``relu(conv(x) + other)``, as the last conv of a residual block."""
        if other is None:
            return super().forward(x) if route == "direct" else self._forward_winograd(x, route)
        if route == "direct":
            return super().add(x, other, relu=True)
        return self._forward_winograd(x, route, residual=other, relu=True)

    def _measure(self, x: torch.Tensor, other: torch.Tensor | None) -> str:
        return fastest_route(self.ROUTES, lambda route: self._run(x, route, other))

    def _route(self, x: torch.Tensor, other: torch.Tensor | None = None) -> str:
        """The route for this input: forced by ``mode``, or measured once per size class (and use: with or without
        a shortcut to add)."""
        if self.mode not in ("auto", *self.ROUTES):
            raise ValueError(f"{type(self).__name__}.mode must be 'auto' or one of {self.ROUTES}, got {self.mode!r}")
        if self.mode == "direct" or not self._winograd_applies(x, *([] if other is None else [other])):
            return "direct"
        if self.mode != "auto":
            return self.mode
        key = size_class(x) if other is None else (*size_class(x), "add")
        route = self.routes.get(key)
        if route is None:
            # timed on one sample: the routes scale alike with the batch, and a 30-view batch timed nine times over
            # would cost seconds
            route = self.routes[key] = self._measure(x[:1], None if other is None else other[:1])
        return route

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C_in, H, W] channels-last or [N, C_in, T, H, W] channels-last-3d -> same layout, C_out."""
        route = self._route(x)
        return super().forward(x) if route == "direct" else self._forward_winograd(x, route)

    def add(self, x: torch.Tensor, other: torch.Tensor, relu: bool = False, inplace: bool = False) -> torch.Tensor:
        """``conv(x) + other`` (then ReLU), as :meth:`OneDnnConv.add`, by the route measured for this use."""
        if self.relu:
            return super().add(x, other, relu=relu, inplace=inplace)  # raises: the ReLU would come first
        route = self._route(x, other) if relu else "direct"  # residual blocks add with the ReLU; other uses stay
        if route == "direct":
            return super().add(x, other, relu=relu, inplace=inplace)
        return self._forward_winograd(x, route, residual=other, relu=relu, out=other if inplace else None)

    def extra_repr(self) -> str:
        routes = ", ".join(
            f"{key[0]} maps/sample of ~2^{key[1]} px{' + shortcut' if len(key) > 2 else ''}: {route}"
            for key, route in self.routes.items()
        )
        return super().extra_repr() + f", winograd={self.mode}" + (f" ({routes})" if routes else "")


def fastest_route(routes: Sequence[_RouteT], run: Callable[[_RouteT], object]) -> _RouteT:
    """The route for which ``run(route)`` took least time (best of ``_MEASURE_ROUNDS`` calls each, in turn, so load
    changes hit every route alike); the first route, the default, unless another is ``_MIN_GAIN`` times faster."""
    best = dict.fromkeys(routes, float("inf"))
    for _ in range(_MEASURE_ROUNDS):
        for route in routes:
            start = time.perf_counter()
            run(route)
            best[route] = min(best[route], time.perf_counter() - start)
    default, *others = routes
    if not others:
        return default
    fastest = min(others, key=best.__getitem__)
    return fastest if best[fastest] * _MIN_GAIN < best[default] else default


def _as_maps(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] channels-last or [N, C, T, H, W] channels-last-3d -> its [N (* T), H, W, C] view."""
    if x.dim() == 4:
        return x.permute(0, 2, 3, 1)
    batch, channels, frames, height, width = x.shape
    return x.permute(0, 2, 3, 4, 1).view(batch * frames, height, width, channels)


def size_class(x: torch.Tensor) -> tuple[int, int]:
    """(maps per sample, log2 of the pixels per map, rounded up) of a conv input ``[N, C, H, W]`` (1 map) or
    ``[N, C, T, H, W]`` (T maps): inputs in one class differ at most in batch size and by 2x in pixel count."""
    maps = x.shape[2] if x.dim() == 5 else 1
    pixels = x.shape[-1] * x.shape[-2]
    return maps, (pixels - 1).bit_length()


class _ConvView:
    """What ``OneDnnConv.__init__`` reads from a conv, taken from an existing OneDnnConv (shares its tensors)."""

    def __init__(self, conv: OneDnnConv):
        self.weight, self.bias = conv.weight, conv.bias
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups


def winograd_eligible(conv: OneDnnConv) -> bool:
    """A plain 3x3 (or 1x3x3) conv, stride 1, padding 1, no dilation or groups, at least MIN_CHANNELS wide."""
    kernel, stride, padding, dilation = (list(v) for v in (conv.kernel_size, conv.stride, conv.padding, conv.dilation))
    spatial_ok = kernel[-2:] == [3, 3] and stride[-2:] == [1, 1] and padding[-2:] == [1, 1] and dilation[-2:] == [1, 1]
    temporal_ok = len(kernel) == 2 or (kernel[0] == 1 and stride[0] == 1 and padding[0] == 0)
    return (
        type(conv) is OneDnnConv
        and spatial_ok
        and temporal_ok
        and conv.groups == 1
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )


def route_summary(model: torch.nn.Module) -> str:
    """'winograd routes: f4x4 10, f2x2 2, direct 1' over every route the model's WinogradConvs chose so far ('' if
    none): what ``lateral bench`` prints beside the fused fp32 copy."""
    counts: dict[str, int] = {}
    order: list[str] = []
    for module in model.modules():
        if isinstance(module, WinogradConv):
            order += [route for route in module.ROUTES if route not in order]
            for route in module.routes.values():
                counts[route] = counts.get(route, 0) + 1
    if not counts:
        return ""
    return "winograd routes: " + ", ".join(f"{route} {counts[route]}" for route in order if route in counts)


def replace_convs(
    model: torch.nn.Module, eligible: Callable[[OneDnnConv], bool], make: Callable[[OneDnnConv], OneDnnConv]
) -> int:
    """Replace, in place, every :class:`OneDnnConv` child of ``model`` for which ``eligible`` holds by ``make(conv)``;
    return how many were replaced."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, OneDnnConv) and eligible(child):
                setattr(module, name, make(child))
                replaced += 1
    return replaced


def use_winograd_convs(model: torch.nn.Module) -> int:
    """Replace, in place, every eligible :class:`OneDnnConv` of ``model`` by a :class:`WinogradConv`."""
    return replace_convs(model, winograd_eligible, WinogradConv)
