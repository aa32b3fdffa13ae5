"""``lateral data check LIST_OR_DIR``: find every unreadable or too-short video before training does.

Accepts a folder (every video file under it), an mmaction2 list file (``path label ...`` lines, or rawframe
``dir total_frames label`` lines, whose folders are checked), or a Kinetics CSV. Each video is opened, its frames
counted from the packets, and its first, middle and last frames decoded (``--full``: every frame).
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lateral.data.datasets import find_video_files
from lateral.data.decode import VIDEO_EXTENSIONS, DecodeError, FrameFolderReader, PyAVReader
from lateral.errors import InputError
from lateral.textfile import TextFileError, read_text

__all__ = ["CheckResult", "check_video", "check_frame_folder", "collect_entries", "check_entries"]


@dataclass
class CheckResult:
    """The verdict on one video or frame folder; ``reason`` is empty when it is fine."""

    path: str
    num_frames: int
    reason: str = ""
    too_short: bool = False
    bad_label: bool = False

    @property
    def ok(self) -> bool:
        return not self.reason


def check_video(path: str | os.PathLike, min_frames: int = 1, full: bool = False) -> CheckResult:
    """Open ``path``, count its frames and decode a few (``full``: all) of them."""

    try:
        with PyAVReader(path, num_threads=1) as reader:
            num_frames = reader.num_frames
            if full:
                errors = _decoder_errors(lambda: reader.get_frames(range(num_frames)))
                if errors:  # damage inside the stream decodes to wrong pixels without an exception
                    return CheckResult(
                        str(path), num_frames, f"the decoder reported {len(errors)} error(s), first: {errors[0]}"
                    )
            else:
                reader.get_frames(sorted({0, num_frames // 2, num_frames - 1}))
    except DecodeError as err:
        return CheckResult(str(path), 0, err.reason)
    if num_frames < min_frames:
        return CheckResult(
            str(path), num_frames, f"too short: {num_frames} frames, need at least {min_frames}", too_short=True
        )
    return CheckResult(str(path), num_frames)


def _decoder_errors(decode) -> list[str]:
    """Run ``decode()`` and return the error messages FFmpeg logged meanwhile (PyAV keeps its log quiet otherwise)."""
    import av.logging

    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs:
            decode()
    finally:
        av.logging.set_level(previous)
    return [f"{name}: {message.strip()}" for level, name, message in logs if level <= av.logging.ERROR]


def check_frame_folder(
    path: str | os.PathLike, total_frames: int | None, filename_tmpl: str, start_index: int, min_frames: int = 1
) -> CheckResult:
    """Check that a rawframe folder holds readable images ``start_index .. start_index + total_frames - 1``."""

    try:
        reader = FrameFolderReader(path, filename_tmpl, num_frames=total_frames, start_index=start_index)
        num_frames = reader.num_frames
        if num_frames:
            reader.get_frames([start_index, start_index + num_frames - 1])
    except DecodeError as err:
        return CheckResult(str(path), 0, err.reason)
    if num_frames < min_frames:
        return CheckResult(
            str(path), num_frames, f"too short: {num_frames} frames, need at least {min_frames}", too_short=True
        )
    return CheckResult(str(path), num_frames)


def _join(prefix: Path | None, name: str) -> Path:
    return prefix / name if prefix is not None else Path(name)


def collect_entries(
    source: str | os.PathLike, data_prefix: str | os.PathLike | None = None
) -> list[tuple[str, Path, int | None, str | None]]:
    """What to check: ``(kind, path, total_frames, label)`` with kind ``'video'`` or ``'frames'``; ``label`` is the
    list line's last field as written (None for folders, CSVs and single videos).

    Raises:
        FileNotFoundError: ``source`` (or ``data_prefix``) does not exist.
    """

    source = Path(source)
    prefix = Path(data_prefix) if data_prefix else None
    if prefix is not None and not prefix.is_dir():
        raise FileNotFoundError(f"--data-prefix '{prefix}' is not a folder")
    if source.is_dir():
        return [("video", path, None, None) for path in find_video_files(source)]
    if not source.is_file():
        raise FileNotFoundError(f"'{source}' is neither a folder nor a list file")

    if source.name.lower().endswith(VIDEO_EXTENSIONS):  # one video: check that file
        return [("video", source, None, None)]
    if source.suffix.lower() == ".py":
        raise InputError(f"'{source}' is a config file; pass the list file or folder its dataset reads")
    if source.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(read_text(source, "list file"), newline="")))
        root = prefix or source.parent
        by_stem = {path.stem: path for path in find_video_files(root)}
        entries: list[tuple[str, Path, int | None, str | None]] = []
        for row in rows:
            stem = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
            entries.append(
                ("video", by_stem.get(stem, by_stem.get(row["youtube_id"], root / f"{stem}.mp4")), None, None)
            )
        return entries
    try:
        text = read_text(source, "list file")
    except TextFileError as err:
        raise InputError(f"'{source}' is not a text list file (one 'path label' per line) nor a video: {err}") from None
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        # the path is what is left after the trailing integer fields (labels, frame counts), so names with spaces
        # work; a rawframe line is a folder followed by its frame count
        numbers = 0
        while numbers < len(fields) - 1 and fields[-1 - numbers].lstrip("-").isdigit():
            numbers += 1
        name = " ".join(fields[: len(fields) - numbers])
        path = _join(prefix, name)
        if not path.exists() and _join(prefix, fields[0]).exists():
            path, numbers = _join(prefix, fields[0]), len(fields) - 1
        label = fields[-1] if numbers else None
        # a folder is a rawframe entry, unless it is named like a video and no frame count comes with it
        # ('clip.mp4 3'): then it is a video path that is a folder, which the decoder reports as such
        if path.is_dir() and (numbers >= 2 or not path.name.lower().endswith(VIDEO_EXTENSIONS)):
            # 'dir total label' and 'dir offset total label': the count comes just before the label
            total = int(fields[-2]) if numbers >= 2 and fields[-2].lstrip("-").isdigit() else None
            entries.append(("frames", path, total, label))
        else:
            entries.append(("video", path, None, label))
    return entries


def label_problem(label: str | None, num_classes: int | None) -> str:
    """Why a list line's label is unusable ('' if it is fine or there is none)."""
    if label is None:
        return ""
    if not label.lstrip("-").isdigit():
        return f"label '{label}' is not a whole number"
    if int(label) < 0 or (num_classes is not None and int(label) >= num_classes):
        limit = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        return f"label {label} is out of range ({limit})"
    return ""


def check_entries(
    entries,
    min_frames: int = 1,
    full: bool = False,
    filename_tmpl: str = "img_{:05}.jpg",
    start_index: int = 1,
    out=None,
    num_classes: int | None = None,
) -> list[CheckResult]:
    """Check every entry (and its label against ``num_classes``), print each bad one with its reason, and return
    all verdicts."""
    out = out or sys.stdout
    results = []
    for kind, path, total, label in entries:
        problem = label_problem(label, num_classes)
        if problem:
            result = CheckResult(str(path), 0, problem, bad_label=True)
        elif kind == "frames":
            result = check_frame_folder(path, total, filename_tmpl, start_index, min_frames)
        else:
            result = check_video(path, min_frames, full)
        if not result.ok:
            print(f"BAD {result.path}: {result.reason}", file=out, flush=True)
        results.append(result)
    return results
