"""Reading frames from video files and frame folders.

:class:`PyAVReader` is the default backend. On opening it demuxes the video stream once (reading packets, not
decoding them) to build an index of presentation timestamps and keyframes; that gives the exact frame count even
where the container header is wrong or empty (webm, some avi), and lets :meth:`PyAVReader.get_frames` seek to the
keyframe at or before the first wanted frame and decode forward, re-seeking across long gaps, instead of decoding a
whole long video to take a few frames. Frames that are not wanted and that no other frame references are skipped by
the decoder; only wanted frames are converted to RGB.

:class:`TorchCodecReader` (optional, needs the ``torchcodec`` package and system FFmpeg) and
:class:`FrameFolderReader` (rawframes: one image per frame) offer the same interface.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lateral.errors import InputError, LateralError

if TYPE_CHECKING:  # PyAV is imported where it is used
    from av.container import InputContainer
    from av.video.reformatter import VideoReformatter

__all__ = [
    "DecodeError",
    "VideoInfo",
    "probe_video",
    "PyAVReader",
    "TorchCodecReader",
    "FrameFolderReader",
    "open_video",
    "torchcodec_available",
    "VIDEO_EXTENSIONS",
]

logger = logging.getLogger("lateral.data")

VIDEO_EXTENSIONS = (
    ".mp4",
    ".avi",
    ".webm",
    ".mkv",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
    ".ts",
    ".m2ts",
    ".mts",
)


class DecodeError(LateralError, RuntimeError):
    """A video or frame folder that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream.

    ``num_frames`` is 0 where the header does not say (webm, mkv); ``exact`` tells whether it was counted from the
    packets rather than taken from the header.
    """

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    codec: str
    exact: bool


def _not_found(path: Path) -> str:
    """'file not found', with the absolute path looked for when ``path`` is relative (to the working folder)."""
    return "file not found" if path.is_absolute() else f"file not found (looked for {path.resolve()})"


def _not_a_file(path: Path) -> str:
    """Why ``path``, which is not a regular file, cannot be a video: missing, a folder (``clip.mp4/``), or else."""
    if not path.exists():
        return _not_found(path)
    return "is a directory" if path.is_dir() else "not a file"


# FFmpeg's still-image demuxers: image2 (picked by file name), image2pipe, and one '<codec>_pipe' per image codec
# (png_pipe, jpeg_pipe, webp_pipe, ...); 'yuv4mpegpipe' (y4m video) has no underscore and is not one of them
_IMAGE_FORMATS = ("image2", "image2pipe")


def _still_image_format(container) -> str | None:
    """The name of the still-image format FFmpeg opened ``container`` with, or None for a video container.

    A picture renamed to ``.mp4`` opens as a video stream of one frame; training would take it for a video.
    """
    for name in container.format.name.split(","):
        if name in _IMAGE_FORMATS or name.endswith("_pipe"):
            return name
    return None


def _open_container(path: str | os.PathLike) -> InputContainer:
    import av

    path = Path(path)
    if not path.is_file():
        raise DecodeError(path, _not_a_file(path))
    if path.stat().st_size == 0:
        raise DecodeError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except Exception as err:  # FFmpeg raises a dozen error types for unreadable input
        raise DecodeError(path, f"cannot open as a video container ({type(err).__name__}: {err})") from None
    if not container.streams.video:
        kinds: list[str] = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise DecodeError(path, f"no video stream (streams: {', '.join(kinds)})")
    image = _still_image_format(container)
    if image:
        container.close()
        raise DecodeError(path, f"an image, not a video (FFmpeg reads it as '{image}')")
    return container


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe_video(path: str | os.PathLike, count_frames: bool = False) -> VideoInfo:
    """Metadata of a video without decoding it.

    Args:
        path: video file.
        count_frames: count the frames by demuxing (reading packets, no decoding): exact where the header is
            missing or wrong, and still much cheaper than decoding.

    Raises:
        DecodeError: the file is missing, empty, not a container, or has no video stream.
    """
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        if count_frames:
            num_frames = len(_PacketIndex.build(container, stream, path).pts)
        else:
            num_frames = int(stream.frames or 0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = num_frames / fps if fps else 0.0
        ctx = stream.codec_context
        return VideoInfo(num_frames, fps, duration, int(ctx.width), int(ctx.height), ctx.name, count_frames)
    finally:
        container.close()


class _PacketIndex:
    """Presentation timestamps of a video stream's frames in display order, and which of them are keyframes."""

    def __init__(self, pts: list[int], keyframes: list[int], key: str, error: str | None):
        self.pts = pts  # frame index -> timestamp
        self.frame_of = {ts: i for i, ts in enumerate(pts)}
        self.keyframes = keyframes  # sorted frame indices of keyframes
        self.key = key  # 'pts' or 'dts': which packet timestamp identifies frames
        self.error = error  # why demuxing stopped early, if it did

    @classmethod
    def build(cls, container, stream, path) -> _PacketIndex:
        records: list[tuple[int | None, int | None, bool]] = []
        error = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.is_corrupt:
                    # e.g. the half-written last packet of a truncated file: its frame would be garbage, and frames
                    # after it would take the numbers of the ones it stands for, so the stream ends here
                    error = f"a damaged packet (stamp {packet.pts}) ends the readable part of the stream"
                    break
                records.append((packet.pts, packet.dts, bool(packet.is_keyframe)))
        except Exception as err:  # a truncated or damaged file: keep what was read before the damage
            error = f"{type(err).__name__}: {err}"
        decode_order_stamps = (
            bool(stream.codec_context.has_b_frames)
            and len(records) > 1
            and all(r[0] is not None and r[1] is not None for r in records)
            and len({r[0] - r[1] for r in records if r[0] is not None and r[1] is not None}) == 1
        )
        if container.format.name == "mpeg":
            # MPEG program streams (.mpg) stamp packets differently after a seek than in a sequential read, one
            # frame off with B-frames: such files are numbered by decoding from the start
            decode_order_stamps = True
        if decode_order_stamps:
            # a codec that reorders frames, yet every pts is its dts plus one constant: the container stamped packets
            # in decode order (H.264 with B-frames in AVI: pts = dts + 1), so the stamps cannot number shown frames
            records = [(None, None, keyframe) for _, _, keyframe in records]
        if all(r[0] is not None for r in records):
            key, stamps = "pts", [r[0] for r in records if r[0] is not None]
        elif all(r[1] is not None for r in records):
            key, stamps = "dts", [r[1] for r in records if r[1] is not None]
        else:
            key, stamps = "none", []
        if key != "none" and len(set(stamps)) == len(stamps):
            order = sorted(range(len(stamps)), key=stamps.__getitem__)
            shown = [stamps[i] for i in order]
            keyframe_positions = [r for r, i in enumerate(order) if records[i][2]]
            # B-frames sent after a keyframe may be shown before it (open groups): holes can lie in the last two groups
            missing_before_tail = _frames_cut_off_ahead(
                shown,
                keyframe_positions[-2] if len(keyframe_positions) > 1 else 0,
                keyframe_positions[-1] if keyframe_positions else 0,
                bool(stream.codec_context.has_b_frames),
                _stamps_per_frame(stream),
            )
            if missing_before_tail:
                error = (
                    f"the stream ends inside a group of frames: its last {missing_before_tail} frame(s), whose "
                    "preceding frames are missing, were left out"
                )
                order = order[: len(order) - missing_before_tail]
            pts = [stamps[i] for i in order]
            rank = {i: r for r, i in enumerate(order)}
            keyframes = sorted(rank[i] for i, r in enumerate(records) if r[2] and i in rank)
        else:  # no usable timestamps: frames are only known by counting while decoding
            key, pts, keyframes = "none", [0] * len(records), []
        if error:
            logger.debug("%s: demuxing stopped after %d packets (%s)", path, len(records), error)
        return cls(pts, keyframes, key, error)


def _stamps_per_frame(stream) -> float | None:
    """Time-base units per frame from the stream's average (else guessed) rate, or None if neither is known."""
    rate = stream.average_rate or stream.guessed_rate
    if not rate or not stream.time_base:
        return None
    return float(1 / (rate * stream.time_base))


def _frames_cut_off_ahead(
    shown: list[int], check_from: int, last_keyframe: int, reorders: bool, nominal_step: float | None
) -> int:
    """How many frames at the end of display order to leave out because the stream was cut inside its last groups.

    A codec with B-frames sends reference frames before the frames shown between them, so a file cut inside a
    group of frames holds later frames without some earlier ones; numbering frames by their stamps would then hand
    out a later frame under an earlier number, silently. With open groups, frames sent after a keyframe may be shown
    before it, so holes can lie anywhere from the second-to-last keyframe on; from there the stream is cut back to
    before its first gap wider than 1.5 frame steps and wider than nine in ten of the gaps up to the last keyframe
    (a variable frame rate has wide gaps of its own).

    Args:
        shown: the frames' stamps in display order.
        check_from: display index of the keyframe from which frames may be missing.
        last_keyframe: display index of the last keyframe; the gaps before it show the stream's own rhythm.
        reorders: whether the codec reorders frames (B-frames); streams without them lose no frame in between.
        nominal_step: stamp units per frame from the stream's rate, for streams too short to show their rhythm.
    """
    if not reorders or len(shown) < 2:
        return 0
    before = shown[: last_keyframe + 1]
    gaps = sorted(b - a for a, b in zip(before, before[1:]) if b > a)
    if len(gaps) >= 5:
        largest_gap = max(1.5 * gaps[0], gaps[(len(gaps) * 9) // 10 - 1])
    elif nominal_step:
        largest_gap = 1.5 * nominal_step
    else:
        return 0
    for position in range(max(check_from, 0) + 1, len(shown)):
        if shown[position] - shown[position - 1] > largest_gap:
            return len(shown) - position
    return 0


class PyAVReader:
    """Random access to the frames of one video file with PyAV.

    Args:
        path: video file.
        num_threads: decoder threads; 0 lets FFmpeg choose (all cores). Use 1 inside DataLoader workers.

    Raises:
        DecodeError: the file is missing, empty, not a video, or has no frames.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int = 0):
        self.path = str(path)
        self.num_threads = int(num_threads)
        self._container: InputContainer | None = None
        self._reformatter: VideoReformatter | None = None
        self._open()
        self.fps = _stream_fps(self._stream)
        self.height = int(self._stream.codec_context.height)
        self.width = int(self._stream.codec_context.width)
        self._index = _PacketIndex.build(self._container, self._stream, path)
        if not self._index.pts:
            reason = f"no decodable video packets ({self._index.error})" if self._index.error else "no video frames"
            self.close()
            raise DecodeError(path, reason)
        # frames_decoded counts decoder output; the benchmark and tests use it to show what seeking saved
        self.frames_decoded = 0

    def _open(self) -> InputContainer:
        self._container = container = _open_container(self.path)
        self._stream = container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._stream.thread_count = self.num_threads
        return container

    def _opened(self) -> InputContainer:
        """The container, opened again if :meth:`close` released it."""
        return self._open() if self._container is None else self._container

    @property
    def num_frames(self) -> int:
        """Frames in the stream, counted from its packets (not the header)."""
        return len(self._index.pts)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0

    def __len__(self) -> int:
        return self.num_frames

    def close(self) -> None:
        """Release the file; a later :meth:`get_frames` opens it again (the frame index is kept)."""
        if self._container is not None:
            self._container.close()
            self._container = None
        self._reformatter = None  # frees its scaler and the scaler's threads

    def __enter__(self) -> PyAVReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode the frames at ``indices`` (0-based, any order, repeats allowed).

        Returns:
            uint8 array ``[len(indices), H, W, 3]`` (RGB), in the order of ``indices``.

        Raises:
            DecodeError: an index is out of range, or the frames cannot be decoded (damaged or truncated file).
        """
        if self._container is None:
            self._open()
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        if indices.min() < 0 or indices.max() >= self.num_frames:
            bad = int(indices.max() if indices.max() >= self.num_frames else indices.min())
            raise DecodeError(self.path, f"frame index {bad} out of range: the video has {self.num_frames} frames")
        wanted = sorted(set(indices.tolist()))
        try:
            if self._index.key == "none":
                frames = self._decode_counting(wanted)
            else:
                try:
                    frames = self._decode_seeking(wanted)
                except _TimestampMismatch:
                    frames = self._decode_counting(wanted)
        except DecodeError:
            raise
        except Exception as err:
            raise DecodeError(self.path, f"decoding failed ({type(err).__name__}: {err})") from None
        missing = [i for i in wanted if i not in frames]
        if missing:
            reason = f"{len(missing)} of {len(wanted)} wanted frames could not be decoded (first: {missing[0]})"
            if self._index.error:
                reason += f"; demuxing stopped early: {self._index.error}"
            raise DecodeError(self.path, reason)
        return np.stack([frames[i] for i in indices.tolist()])

    def decode_all(self) -> np.ndarray:
        """Every frame, decoded sequentially from the start: ``[num_frames, H, W, 3]``. The naive baseline."""
        container = self._opened()
        container.seek(0, stream=self._stream)
        self._stream.codec_context.skip_frame = "DEFAULT"
        frames = []
        for frame in container.decode(self._stream):
            self.frames_decoded += 1
            frames.append(self._rgb(frame))
        return np.stack(frames)

    def _frame_index(self, frame) -> int:
        stamp = frame.pts if self._index.key == "pts" else (frame.dts if frame.dts is not None else frame.pts)
        index = self._index.frame_of.get(stamp)
        if index is None:
            raise _TimestampMismatch
        return index

    def _decode_seeking(self, wanted: list[int]) -> dict[int, np.ndarray]:
        container = self._opened()
        index = self._index
        wanted_set = set(wanted)
        frames: dict[int, np.ndarray] = {}
        ctx = self._stream.codec_context
        next_pos = 0  # position in ``wanted`` of the first frame not yet decoded
        fed_max = -1  # largest frame index handed to the decoder since the last seek
        sought = -1  # keyframe of the last seek: never sought again, where the container landed before it
        packets = None
        last_out = -1  # index of the last frame the decoder gave since the last seek
        while next_pos < len(wanted):
            target = wanted[next_pos]
            k = bisect.bisect_right(index.keyframes, target) - 1
            keyframe = index.keyframes[k] if k >= 0 else 0
            # Seek when the keyframe before the next wanted frame lies beyond what the decoder has been fed:
            # everything still inside the decoder is then older than the wanted frame, so flushing loses nothing.
            if packets is None or (keyframe > fed_max + 1 and keyframe > sought):
                container.seek(index.pts[keyframe], stream=self._stream, backward=True, any_frame=False)
                packets = container.demux(self._stream)
                fed_max, sought, last_out = -1, keyframe, -1
                landed = None
            else:
                landed = -1
            ended = False
            for packet in packets:
                # where the index ends: flush what the decoder holds, stop
                ended = bool(packet.is_corrupt and packet.size)
                stamp = packet.pts if index.key == "pts" else packet.dts
                packet_index = None if ended or stamp is None else index.frame_of.get(stamp)
                if packet_index is not None:
                    if fed_max < 0 and landed is None and packet_index > keyframe:
                        # the seek landed past the keyframe (MPEG-TS seeks by byte estimates): the frames up to the
                        # next keyframe cannot be decoded from here, so number frames by decoding from the start
                        raise _TimestampMismatch
                    fed_max = max(fed_max, packet_index)
                    # a frame nobody wants and nobody references is not decoded at all
                    ctx.skip_frame = "DEFAULT" if packet_index in wanted_set else "NONREF"
                else:
                    ctx.skip_frame = "DEFAULT"
                for frame in ctx.decode(None) if ended else packet.decode():
                    self.frames_decoded += 1
                    frame_index = self._frame_index(frame)
                    if frame_index <= last_out:
                        # frames leave the decoder in display order: stamps that do not rise are not display-order
                        # times (a container stamped packets in decode order in a way the index could not tell), so
                        # count frames instead
                        raise _TimestampMismatch
                    last_out = frame_index
                    if landed is None:
                        landed = frame_index
                        if frame_index > target:  # the container's seek overshot: decode from the start
                            raise _TimestampMismatch
                    if frame_index in wanted_set and frame_index not in frames:
                        frames[frame_index] = self._rgb(frame)
                while next_pos < len(wanted) and wanted[next_pos] in frames:
                    next_pos += 1
                if next_pos == len(wanted) or ended:
                    break
                next_keyframe = index.keyframes[bisect.bisect_right(index.keyframes, wanted[next_pos]) - 1]
                # a container whose seek lands before the keyframe asked for (a keyframe missing from its seek index,
                # seen in variable-frame-rate MP4s) is decoded forward from where it landed, not sought again
                if next_keyframe > fed_max + 1 and next_keyframe > sought:
                    break  # re-seek
            else:
                break  # end of stream (the last packet flushes the decoder)
            if ended:
                break
        ctx.skip_frame = "DEFAULT"
        return frames

    def _decode_counting(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Decode from the start, numbering frames in output order; for streams without usable timestamps."""
        wanted_set = set(wanted)
        last = wanted[-1]
        container = self._opened()
        frames: dict[int, np.ndarray] = {}
        container.seek(0, stream=self._stream)
        self._stream.codec_context.skip_frame = "DEFAULT"
        frame_index = -1
        for packet in container.demux(self._stream):
            ended = bool(packet.is_corrupt and packet.size)  # where the index ends, as in _decode_seeking
            for frame in self._stream.codec_context.decode(None) if ended else packet.decode():
                frame_index += 1
                self.frames_decoded += 1
                if frame_index in wanted_set:
                    frames[frame_index] = self._rgb(frame)
            if frame_index >= last or ended:
                break
        return frames

    def _rgb(self, frame) -> np.ndarray:
        """[H, W, 3] uint8 RGB at the stream's size: a stream whose resolution changes midway is scaled to the size
        it started with, so every clip stacks.

        The reader converts with a scaler of its own, freed on :meth:`close`. ``frame.to_ndarray(format=...)``
        would use PyAV's per-thread cached scaler (PyAV >= 18.1.1), which outlives the reader and, with its slice
        threads, is inherited by a forked process that then blocks in its first conversion.
        """
        if self._reformatter is None:
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()
        rgb = self._reformatter.reformat(
            frame, format="rgb24", width=self.width, height=self.height, threads=self.num_threads
        )
        return rgb.to_ndarray()


class _TimestampMismatch(Exception):
    """Decoded frames carry timestamps the packet index does not know: fall back to counting."""


def torchcodec_available() -> bool:
    """Whether the optional torchcodec backend can be imported (it needs the system FFmpeg libraries)."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:
        return False
    return True


class TorchCodecReader:
    """The :class:`PyAVReader` interface over ``torchcodec.decoders.VideoDecoder`` (exact seek mode).

    One ``get_frames_at`` call takes all indices of a multi-view test at once, which torchcodec does faster than a
    seek per clip.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int = 0):
        from torchcodec.decoders import VideoDecoder

        self.path = str(path)
        path = Path(path)
        if not path.is_file():
            raise DecodeError(path, _not_a_file(path))
        if path.stat().st_size == 0:
            raise DecodeError(path, "empty file (0 bytes)")
        try:
            self._decoder = VideoDecoder(str(path), seek_mode="exact", num_ffmpeg_threads=int(num_threads))
        except Exception as err:
            raise DecodeError(path, f"cannot open as a video ({type(err).__name__}: {err})") from None
        meta = self._decoder.metadata
        self.fps = float(meta.average_fps or 0.0)
        self.height = int(meta.height)
        self.width = int(meta.width)
        self.frames_decoded = 0
        if not self.num_frames:
            raise DecodeError(path, "no video frames")

    @property
    def num_frames(self) -> int:
        return int(self._decoder.metadata.num_frames or 0)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0

    def __len__(self) -> int:
        return self.num_frames

    def close(self) -> None:
        self._decoder = None

    def __enter__(self) -> TorchCodecReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 ``[len(indices), H, W, 3]`` frames at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_frames):
            raise DecodeError(self.path, f"frame index out of range: the video has {self.num_frames} frames")
        try:
            batch = self._decoder.get_frames_at(indices=indices.tolist()).data  # [N, C, H, W]
        except Exception as err:
            raise DecodeError(self.path, f"decoding failed ({type(err).__name__}: {err})") from None
        self.frames_decoded += len(indices)
        return batch.permute(0, 2, 3, 1).contiguous().numpy()


class FrameFolderReader:
    """Frames stored as one image per frame (mmaction2 rawframes).

    Args:
        frame_dir: folder of images.
        filename_tmpl: file name of frame ``i``, formatted with ``i`` (``'img_{:05}.jpg'``).
        num_frames: frame count from the list file; when None, the images matching the template are counted.
        start_index: index of the first image (mmaction2 rawframes start at 1).
    """

    def __init__(
        self,
        frame_dir: str | os.PathLike,
        filename_tmpl: str = "img_{:05}.jpg",
        num_frames: int | None = None,
        start_index: int = 1,
    ):
        self.path = str(frame_dir)
        self.frame_dir = Path(frame_dir)
        if not self.frame_dir.is_dir():
            raise DecodeError(frame_dir, "frame folder not found")
        self.filename_tmpl = filename_tmpl
        self.start_index = start_index
        if num_frames is None:
            num_frames = 0
            while (self.frame_dir / filename_tmpl.format(start_index + num_frames)).is_file():
                num_frames += 1
        self._num_frames = int(num_frames)
        self.fps = 0.0
        self.frames_decoded = 0

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def __len__(self) -> int:
        return self._num_frames

    def close(self) -> None:
        pass

    def get_frames(self, indices: Sequence[int] | np.ndarray, absolute: bool = True) -> np.ndarray:
        """uint8 ``[len(indices), H, W, 3]``; with ``absolute`` the indices already include ``start_index``."""
        from PIL import Image

        offset = 0 if absolute else self.start_index
        images = []
        cache: dict[int, np.ndarray] = {}
        for index in np.asarray(indices, dtype=np.int64).reshape(-1).tolist():
            if index not in cache:
                file = self.frame_dir / self.filename_tmpl.format(index + offset)
                try:
                    with Image.open(file) as image:
                        cache[index] = np.asarray(image.convert("RGB"))
                except FileNotFoundError:
                    raise DecodeError(self.frame_dir, f"frame file {file.name} not found") from None
                except Exception as err:
                    reason = f"cannot read frame {file.name} ({type(err).__name__}: {err})"
                    raise DecodeError(self.frame_dir, reason) from None
                self.frames_decoded += 1
            images.append(cache[index])
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise DecodeError(self.frame_dir, f"frames have different sizes: {sorted(shapes)}")
        return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)


def open_video(path: str | os.PathLike, backend: str = "pyav", num_threads: int = 0):
    """Open ``path`` with a backend: ``'pyav'`` (default), ``'torchcodec'``, or ``'auto'`` (torchcodec when it
    imports, else PyAV)."""
    if backend == "auto":
        backend = "torchcodec" if torchcodec_available() else "pyav"
    if backend == "pyav":
        return PyAVReader(path, num_threads=num_threads)
    if backend == "torchcodec":
        if not torchcodec_available():
            raise InputError(
                "backend 'torchcodec' needs the torchcodec package and the system FFmpeg libraries; use backend='pyav'"
            )
        return TorchCodecReader(path, num_threads=num_threads)
    raise InputError(f"unknown decoding backend '{backend}', expected 'pyav', 'torchcodec' or 'auto'")
