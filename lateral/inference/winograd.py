"""Winograd F(2x2, 3x3) for the wide fp32 3x3 convolutions of the inference copy.

A 3x3 stride-1 convolution over 2x2 output tiles costs 16 multiply-adds per tile and channel pair instead of 36:
each 4x4 input tile ``d`` becomes ``B^T d B``, the weight ``G g G^T`` (once per conv), the 16 products are 16 matrix
multiplications (tiles x C_in) @ (C_in x C_out), and ``A^T m A`` gives the 2x2 outputs (one [4, 16] GEMM over all
tiles). The transforms only add, subtract and halve, so in float32 the result stays within about 1e-6 (relative) of
the direct convolution.

Tiles are processed one band of tile rows at a time, in scratch memory that is kept (per thread) between calls: the
transformed tiles stay in cache, and a large map does not pay page faults on fresh buffers several times its size.

Whether this beats oneDNN's direct convolution depends on the CPU (it needs a fast fp32 GEMM) and on the shape, so
:class:`WinogradConv` times both on the first input of each shape and keeps the faster. On the 2-core AVX-512 VM
of ``benchmarks/README.md`` it won for 128- to 512-channel convs on FPN-50 maps at 800x1216 (the P2 smoothing conv:
288 -> 211 ms, 512 channels at 25x38: 17.8 -> 11.5 ms) and lost for 64 channels (16 -> 23 ms), which are therefore
not tried.
"""

from __future__ import annotations

import threading
import time

import torch

from lateral.inference.optimization import OneDnnConv

__all__ = ["MIN_CHANNELS", "WinogradConv", "use_winograd_convs", "winograd_conv3x3", "winograd_weight"]

# Narrower convs make GEMMs too thin to win back the transforms (measured here: 64 channels 1.4x slower).
MIN_CHANNELS = 128
# A band holds about this many floats of transformed input tiles.
_BAND_FLOATS = 1 << 20
# The measured route must be this much faster than the direct conv to be taken; each route runs this many times
# (alternately, best time kept) on the first input of a shape.
_MIN_GAIN = 1.05
_MEASURE_ROUNDS = 3

_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
# A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]; output (a, b) of a tile is sum over (r, c) of A^T[a, r] A^T[b, c] m[r, c]
_A_T = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]])
_OUTPUT_TRANSFORM = torch.kron(_A_T, _A_T)  # [4 (a, b), 16 (r, c)]
_scratch = threading.local()


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """[C_out, C_in, 3, 3] (or [C_out, C_in, 1, 3, 3]) -> [16, C_in, C_out], ``G g G^T`` computed in float64."""
    if weight.dim() == 5 and weight.shape[2] == 1:
        weight = weight[:, :, 0]
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weight needs a [C_out, C_in, 3, 3] weight, got {tuple(weight.shape)}")
    out_channels, in_channels = weight.shape[:2]
    transformed = _G @ weight.detach().double() @ _G.T  # [C_out, C_in, 4, 4]
    return transformed.permute(2, 3, 1, 0).reshape(16, in_channels, out_channels).to(weight.dtype).contiguous()


def _scratch_floats(name: str, numel: int) -> torch.Tensor:
    """A float32 scratch vector of at least ``numel`` elements for this thread (grown, never shrunk)."""
    buffer = getattr(_scratch, name, None)
    if buffer is None or buffer.numel() < numel:
        buffer = torch.empty(numel)
        setattr(_scratch, name, buffer)
    return buffer[:numel]


def _input_transform(padded: torch.Tensor, rows: torch.Tensor, tiles: torch.Tensor) -> None:
    """``B^T d B`` of the 4x4 tiles (stride 2) of ``padded [N, 2R+2, 2W'+2, C]``, via ``rows [4, N, R, 2W'+2, C]``,
    into ``tiles [4, 4, N, R, W', C]``, with B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
    band_rows, tiles_w = tiles.shape[3], tiles.shape[4]
    even, odd = padded[:, 0 : 2 * band_rows + 1 : 2], padded[:, 1 : 2 * band_rows + 2 : 2]
    torch.sub(even[:, :band_rows], even[:, 1:], out=rows[0])
    torch.add(odd[:, :band_rows], even[:, 1:], out=rows[1])
    torch.sub(even[:, 1:], odd[:, :band_rows], out=rows[2])
    torch.sub(odd[:, :band_rows], odd[:, 1:], out=rows[3])
    even, odd = rows[:, :, :, 0::2], rows[:, :, :, 1::2]
    torch.sub(even[:, :, :, :tiles_w], even[:, :, :, 1:], out=tiles[:, 0])
    torch.add(odd[:, :, :, :tiles_w], even[:, :, :, 1:], out=tiles[:, 1])
    torch.sub(even[:, :, :, 1:], odd[:, :, :, :tiles_w], out=tiles[:, 2])
    torch.sub(odd[:, :, :, :tiles_w], odd[:, :, :, 1:], out=tiles[:, 3])


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     relu: bool = False) -> torch.Tensor:
    """3x3 convolution, stride 1, zero padding 1, then + bias and ReLU if asked.

    Args:
        x: [N, H, W, C_in] float32, contiguous (a channels-last map, permuted).
        weight: [16, C_in, C_out] from :func:`winograd_weight`.
        bias: [C_out] or None.

    Returns:
        [N, H, W, C_out] float32, contiguous.
    """
    batch, height, width, in_channels = x.shape
    out_channels = weight.shape[2]
    if weight.shape[1] != in_channels or weight.shape[0] != 16:
        raise ValueError(f"winograd weight {tuple(weight.shape)} does not fit an input with {in_channels} channels")
    tiles_h, tiles_w = (height + 1) // 2, (width + 1) // 2
    padded_w = 2 * tiles_w + 2
    band_rows = max(1, min(tiles_h, _BAND_FLOATS // (16 * tiles_w * max(in_channels, out_channels) * batch)))
    band_tiles = batch * band_rows * tiles_w
    padded_all = _scratch_floats("padded", batch * (2 * band_rows + 2) * padded_w * in_channels)
    padded_all = padded_all.view(batch, 2 * band_rows + 2, padded_w, in_channels)
    rows_all = _scratch_floats("rows", 4 * batch * band_rows * padded_w * in_channels)
    tiles_all = _scratch_floats("tiles", 16 * band_tiles * in_channels)
    products_all = _scratch_floats("products", 16 * band_tiles * out_channels)
    outputs_all = _scratch_floats("outputs", 4 * band_tiles * out_channels)
    out = torch.empty(batch, height, width, out_channels)
    even_width = width == 2 * tiles_w
    # the scratch is shared by every conv of this thread: the zero border columns are reset for each call
    padded_all[:, :, 0].zero_()
    padded_all[:, :, width + 1 :].zero_()
    for first in range(0, tiles_h, band_rows):
        rows = min(band_rows, tiles_h - first)
        count = batch * rows * tiles_w
        visible = min(2 * rows, height - 2 * first)  # output rows of this band inside the map
        # input rows 2*first - 1 .. 2*(first + rows) land on padded rows 0 .. 2*rows + 1
        top, bottom = 2 * first - 1, 2 * (first + rows) + 1
        src_top, src_bottom = max(top, 0), min(bottom, height)
        padded = padded_all[:, : 2 * rows + 2]
        if top < 0:
            padded[:, 0].zero_()
        if bottom > height:
            padded[:, src_bottom - top :].zero_()
        padded[:, src_top - top : src_bottom - top, 1 : width + 1].copy_(x[:, src_top:src_bottom])
        tiles = tiles_all[: 16 * count * in_channels]
        products = products_all[: 16 * count * out_channels].view(16, count, out_channels)
        rows_buf = rows_all[: 4 * batch * rows * padded_w * in_channels].view(4, batch, rows, padded_w, in_channels)
        _input_transform(padded, rows_buf, tiles.view(4, 4, batch, rows, tiles_w, in_channels))
        torch.bmm(tiles.view(16, count, in_channels), weight, out=products)
        if bias is not None:
            products[5].add_(bias)  # m[1][1] enters all four outputs with weight +1
        # A^T m A as one small GEMM over all tiles and channels: [4, 16] @ [16, tiles * C_out]
        outputs = outputs_all[: 4 * count * out_channels]
        torch.mm(_OUTPUT_TRANSFORM, products.view(16, -1), out=outputs.view(4, -1))
        corners = outputs.view(2, 2, batch, rows, tiles_w, out_channels)  # output (a, b) of every tile
        band = out[:, 2 * first : 2 * first + visible]
        if even_width and visible == 2 * rows:
            pairs = [(corners, band.view(batch, rows, 2, tiles_w, 2, out_channels).permute(2, 4, 0, 1, 3, 5))]
        else:  # an odd-sized map: the last tile row or column has fewer outputs
            pairs = [(corners[a, b, :, : (visible - a + 1) // 2, : (width - b + 1) // 2], band[:, a::2, b::2])
                     for a in range(2) for b in range(2)]
        for source, target in pairs:
            if relu:
                torch.clamp(source, min=0, out=target)
            else:
                target.copy_(source)
    return out


class WinogradConv(OneDnnConv):
    """A fp32 3x3 (or 1x3x3) stride-1 conv that runs as :func:`winograd_conv3x3` where that is measured faster.

    The first input of each shape runs both routes three times, alternately, and the faster one is kept for that shape
    (``routes``); ``mode`` 'winograd' or 'direct' forces a route. Other dtypes and layouts run oneDNN as before.
    Same parameters and state-dict names as the conv it replaces.
    """

    def __init__(self, conv: OneDnnConv):
        super().__init__(_ConvView(conv), relu=conv.relu)
        self.mode = "auto"
        self.routes: dict[tuple[int, ...], str] = {}
        self._transformed: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_transformed"] = None
        return state

    def transformed_weight(self) -> torch.Tensor:
        if self._transformed is None or self._transformed.dtype != self.weight.dtype:
            self._transformed = winograd_weight(self.weight)
        return self._transformed

    def _forward_winograd(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        if x.dim() == 4:
            out = winograd_conv3x3(x.permute(0, 2, 3, 1), self.transformed_weight(), self.bias, self.relu)
            return out.permute(0, 3, 1, 2)
        frames, height, width = x.shape[2:]
        maps = x.permute(0, 2, 3, 4, 1).reshape(batch * frames, height, width, channels)
        out = winograd_conv3x3(maps, self.transformed_weight(), self.bias, self.relu)
        return out.view(batch, frames, height, width, -1).permute(0, 4, 1, 2, 3)

    def _winograd_applies(self, x: torch.Tensor) -> bool:
        layout = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return (
            x.dtype == torch.float32 and self.weight.dtype == torch.float32 and x.dim() in (4, 5)
            and x.is_contiguous(memory_format=layout)
        )

    def _measure(self, x: torch.Tensor) -> str:
        best = {"direct": float("inf"), "winograd": float("inf")}
        for _ in range(_MEASURE_ROUNDS):
            for route, run in (("direct", super().forward), ("winograd", self._forward_winograd)):
                start = time.perf_counter()
                run(x)
                best[route] = min(best[route], time.perf_counter() - start)
        return "winograd" if best["winograd"] * _MIN_GAIN < best["direct"] else "direct"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C_in, H, W] channels-last or [N, C_in, T, H, W] channels-last-3d -> same layout, C_out."""
        if self.mode == "direct" or not self._winograd_applies(x):
            return super().forward(x)
        route = self.mode
        if route == "auto":
            shape = tuple(x.shape)
            route = self.routes.get(shape) or self.routes.setdefault(shape, self._measure(x))
        return self._forward_winograd(x) if route == "winograd" else super().forward(x)

    def extra_repr(self) -> str:
        routes = ", ".join(f"{'x'.join(map(str, shape))}: {route}" for shape, route in self.routes.items())
        return super().extra_repr() + f", winograd={self.mode}" + (f" ({routes})" if routes else "")


class _ConvView:
    """What ``OneDnnConv.__init__`` reads from a conv, taken from an existing OneDnnConv (shares its tensors)."""

    def __init__(self, conv: OneDnnConv):
        self.weight, self.bias = conv.weight, conv.bias
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups


def winograd_eligible(conv: OneDnnConv) -> bool:
    """A plain 3x3 (or 1x3x3) conv, stride 1, padding 1, no dilation or groups, at least MIN_CHANNELS wide."""
    kernel, stride, padding, dilation = (list(v) for v in (conv.kernel_size, conv.stride, conv.padding, conv.dilation))
    spatial_ok = (kernel[-2:] == [3, 3] and stride[-2:] == [1, 1] and padding[-2:] == [1, 1]
                  and dilation[-2:] == [1, 1])
    temporal_ok = len(kernel) == 2 or (kernel[0] == 1 and stride[0] == 1 and padding[0] == 0)
    return (
        type(conv) is OneDnnConv and spatial_ok and temporal_ok and conv.groups == 1
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )


def use_winograd_convs(model: torch.nn.Module) -> int:
    """Replace, in place, every eligible :class:`OneDnnConv` of ``model`` by a :class:`WinogradConv`."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, OneDnnConv) and winograd_eligible(child):
                setattr(module, name, WinogradConv(child))
                replaced += 1
    return replaced
