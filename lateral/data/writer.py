"""Writing uint8 frames to real video files with PyAV (mp4, webm, avi, mkv).

Used by the tests (tiny clips made on the fly), the synthetic motion dataset and the decode benchmark.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from lateral.errors import InputError

__all__ = ["write_video", "default_codec"]

# container suffix -> codecs to try, best first
_CODEC_PREFERENCE: dict[str, tuple[str, ...]] = {
    ".mp4": ("libx264", "h264", "mpeg4"),
    ".mkv": ("libx264", "h264", "mpeg4"),
    ".mov": ("libx264", "h264", "mpeg4"),
    ".webm": ("libvpx-vp9", "libvpx"),
    ".avi": ("mpeg4", "mjpeg"),
}


def default_codec(path: str | os.PathLike) -> str:
    """The codec :func:`write_video` uses for ``path``'s container: h264 for mp4 when PyAV has an encoder for it,
    else mpeg4; VP9 (else VP8) for webm; mpeg4 for avi."""
    import av

    suffix = Path(path).suffix.lower()
    if suffix not in _CODEC_PREFERENCE:
        raise InputError(
            f"cannot write '{path}': unknown video suffix '{suffix}', expected one of {', '.join(_CODEC_PREFERENCE)}"
        )
    for codec in _CODEC_PREFERENCE[suffix]:
        if codec in av.codecs_available:
            try:
                av.codec.Codec(codec, "w")
            except Exception:  # listed but no encoder in this FFmpeg build
                continue
            return codec
    raise InputError(f"PyAV has none of the encoders {_CODEC_PREFERENCE[suffix]} needed for '{suffix}' files")


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 25.0,
    codec: str | None = None,
    gop_size: int | None = None,
    quality: str = "high",
    bframes: int | None = None,
) -> Path:
    """Encode ``frames`` into a video file; the container comes from the suffix.

    Args:
        path: output file (``.mp4``, ``.mkv``, ``.mov``, ``.webm`` or ``.avi``); parent folders are created.
        frames: uint8 array ``[T, H, W, 3]`` (RGB) or ``[T, H, W]`` (grey). H and W must be even (yuv420p).
        fps: frame rate (may be fractional, e.g. 29.97).
        codec: encoder name; by default :func:`default_codec` (h264, else mpeg4, for mp4).
        gop_size: frames between keyframes (the encoder's default when None).
        quality: ``'high'`` (near-lossless, for tests that compare pixel values), ``'medium'`` or ``'low'``.
        bframes: number of B-frames for codecs that have them (the encoder's default when None).

    Returns:
        The path written.
    """
    import av
    from av.video.reformatter import VideoReformatter

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames must be [T, H, W, 3] or [T, H, W], got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise InputError(f"frames must be uint8, got {frames.dtype}")
    num_frames, height, width = frames.shape[:3]
    if num_frames == 0:
        raise InputError("cannot write a video with no frames")
    if height % 2 or width % 2:
        raise InputError(f"frame height and width must be even for yuv420p video, got {height}x{width}")
    codec = codec or default_codec(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    rate = Fraction(fps).limit_denominator(1001)
    options: dict[str, str] = {}
    if codec in ("libx264", "h264"):
        options["crf"] = {"high": "1", "medium": "18", "low": "28"}[quality]
        options["preset"] = "veryfast"
        options["threads"] = "1"
        # x264's macroblock-tree rate control made the same 32x32 clip encode to different bytes in about 1 call
        # in 8 (196 of 1600 in a loop); with it off, 0 of 4000 differed
        options["x264-params"] = "mbtree=0"
    elif codec.startswith("libvpx"):
        options["crf"] = {"high": "4", "medium": "20", "low": "40"}[quality]
        options["b"] = "0"
        options["threads"] = "1"
        options["deadline"] = "realtime" if quality != "high" else "good"
        options["cpu-used"] = "8"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        if not isinstance(stream, av.VideoStream):
            raise InputError(f"codec '{codec}' is not a video encoder (it made a {stream.type} stream)")
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        # one encoder thread: PyAV's own thread settings override the "threads" option above
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "NONE"
        if codec in ("mpeg4", "mjpeg"):
            # fixed quantiser: 2 is the finest mpeg4 allows with usable file sizes
            stream.codec_context.qmin = {"high": 1, "medium": 3, "low": 8}[quality]
            stream.codec_context.qmax = {"high": 2, "medium": 6, "low": 16}[quality]
            stream.codec_context.bit_rate = 20_000_000
        if gop_size is not None:
            stream.codec_context.gop_size = gop_size
            if codec == "libx264":
                stream.codec_context.options = {
                    **stream.codec_context.options,
                    "keyint_min": str(gop_size),
                    "sc_threshold": "0",
                }
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        # a scaler of this call's own, with no threads: frame.reformat() would leave PyAV's per-thread cached one
        # (with slice threads) behind in this process, which hangs DataLoader workers forked later (PyAV 18.1.1)
        reformatter = VideoReformatter()
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            # converted here rather than inside encode(): with the implicit conversion there, 60 encodes of the same
            # 32x32 frames gave 7 different files, with it 1
            frame = reformatter.reformat(frame, format=stream.pix_fmt, threads=1)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
