"""Datasets over the usual video layouts, built from mmaction2 dataset dicts.

``build_dataset(dict(type='VideoDataset', ann_file=..., data_prefix=dict(video=DIR), pipeline=[...]))`` looks
``type`` up in :data:`DATASET_TYPES`:

- ``VideoDataset``: list files of ``path label`` lines (``path l1 l2 ...`` with ``multi_class``).
- ``RawframeDataset``: frame folders, ``dir total_frames label`` lines (``dir offset total_frames label`` with
  ``with_offset``), images named by ``filename_tmpl``.
- ``KineticsCSVDataset``: the Kinetics CSV (``label,youtube_id,time_start,time_end,split``) over downloaded clips
  named ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` (flat or in class folders).
- ``ClassFolderDataset``: one folder per class (UCF101, HMDB51), optionally with a class index file
  (``classInd.txt``) and a split list (``trainlist01.txt``).

An item is the pipeline's result dict with ``inputs`` and ``label``. A sample whose file is missing, damaged or
truncated does not stop training: the item is None (``collate`` drops it), the failure is kept in
``dataset.failures`` as ``(path, reason)`` in this process, counted across DataLoader workers in
``dataset.num_failures``, and logged once per file as a warning.
"""

from __future__ import annotations

import abc
import csv
import io
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lateral.config import ConfigError, suggest
from lateral.data.decode import VIDEO_EXTENSIONS, DecodeError
from lateral.data.pipeline import build_pipeline, close_reader, ensure_inputs
from lateral.errors import InputError
from lateral.registry import build_from_table
from lateral.textfile import printable, read_text

__all__ = [
    "BaseActionDataset",
    "VideoDataset",
    "RawframeDataset",
    "KineticsCSVDataset",
    "ClassFolderDataset",
    "DATASET_TYPES",
    "build_dataset",
    "check_label_range",
    "count_labelled",
    "load_label_map",
]

logger = logging.getLogger("lateral.data")

_MAX_WORKER_SLOTS = 64


def _process_slot() -> int:
    """This process's slot in a dataset's shared counters: 0 in the main process, 1 + the worker id in a
    DataLoader worker."""
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else 1 + info.id % (_MAX_WORKER_SLOTS - 1)


def load_label_map(path: str | os.PathLike) -> list[str]:
    """Class names, index = position, from a label-map text file.

    Accepted layouts: one name per line (Kinetics ``label_map_k400.txt``); ``index name`` lines with consecutive
    indices from 0 or 1 (UCF101 ``classInd.txt``); a CSV with an ``id,name`` header. The file is UTF-8, or UTF-8 /
    UTF-16 with a byte-order mark (see :func:`lateral.textfile.read_text`).

    Names are returned as written, control characters included; print them through
    :func:`lateral.textfile.printable`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file, a malformed ``id,name`` table, or bytes that are not text in those encodings.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map '{path}' not found")
    lines = [line.strip() for line in read_text(path, "label map").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise InputError(f"label map '{path}' is empty")
    if lines[0].lower().replace(" ", "") in ("id,name", "id,label", "index,name"):
        pairs = []
        for line_number, row in enumerate(csv.reader(lines[1:]), start=2):
            if len(row) < 2 or not row[0].strip().isdigit() or not row[1].strip():
                raise InputError(f"label map '{path}', line {line_number}: expected 'id,name', got {','.join(row)!r}")
            pairs.append((int(row[0]), row[1].strip()))
        return _names_by_index(pairs, path)
    numbered = [m for line in lines if (m := re.match(r"^(\d+)[\s,]+(.+)$", line))]
    if len(numbered) == len(lines):
        pairs = [(int(m.group(1)), m.group(2).strip()) for m in numbered]
        if sorted(i for i, _ in pairs) in (list(range(len(pairs))), list(range(1, len(pairs) + 1))):
            return [name for _, name in sorted(pairs)]  # 'index name' lines, in any order
    return lines


def _names_by_index(pairs: list[tuple[int, str]], path: Path) -> list[str]:
    """Names ordered by their ids, which must be 0..N-1 or 1..N each once: a gap or a repeat would shift every
    later name onto another class."""
    ids = sorted(i for i, _ in pairs)
    if ids not in (list(range(len(ids))), list(range(1, len(ids) + 1))):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        what = f"ids {repeated[:5]} appear more than once" if repeated else "the ids leave gaps"
        raise InputError(f"label map '{path}': {what}; ids must run 0..N-1 (or 1..N), each once")
    return [name for _, name in sorted(pairs)]


def _prefix(data_prefix: str | os.PathLike | dict | None, key: str) -> Path | None:
    if data_prefix is None:
        return None
    if isinstance(data_prefix, dict):
        value = data_prefix.get(key)
        if value is None:
            others = [k for k in data_prefix]
            raise ConfigError(f"data_prefix has no '{key}' entry (has {others}); expected dict({key}=FOLDER)")
        return Path(value)
    return Path(data_prefix)


def _check_file(path: str | os.PathLike | None, what: str) -> Path:
    if path is None:
        raise ConfigError(f"{what} is required")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} '{path}' not found" + (" (it is a folder)" if path.is_dir() else ""))
    return path


def _check_dir(path: Path | None, what: str) -> None:
    if path is not None and not path.is_dir():
        raise FileNotFoundError(f"{what} '{path}' not found" + (" (it is a file)" if path.is_file() else ""))


class BaseActionDataset(torch.utils.data.Dataset, abc.ABC):
    """Samples (dicts of ``filename`` or ``frame_dir``, ``label``, ...) run through a pipeline.

    Args:
        pipeline: step dicts for :func:`lateral.data.build_pipeline` (or a built pipeline).
        test_mode: passed to the samples' results (steps take their own ``test_mode``).
        multi_class: samples carry several labels; ``label`` becomes a float one-hot vector ``[num_classes]``.
        num_classes: classes; required with ``multi_class``, and checked against the labels when given.
        start_index: index of a video's first frame (0 for videos, 1 for mmaction2 rawframes).
        modality: ``'RGB'``.
        on_error: what a sample that cannot be read returns: ``'none'`` (None, dropped by ``collate``),
            ``'next'`` (the next readable sample, at most ``max_refetch`` tries) or ``'raise'``.
        max_refetch: tries for ``on_error='next'``.
    """

    def __init__(
        self,
        pipeline: Sequence[dict] | Any,
        test_mode: bool = False,
        multi_class: bool = False,
        num_classes: int | None = None,
        start_index: int = 0,
        modality: str = "RGB",
        on_error: str = "none",
        max_refetch: int = 10,
    ):
        if on_error not in ("none", "next", "raise"):
            raise ConfigError(f"on_error must be 'none', 'next' or 'raise', got '{on_error}'")
        if multi_class and not num_classes:
            raise ConfigError("multi_class=True needs num_classes (labels become one-hot vectors)")
        if modality != "RGB":
            raise ConfigError(f"modality '{modality}' is not supported (only 'RGB')")
        self.test_mode = test_mode
        self.multi_class = multi_class
        self.num_classes = num_classes
        self.start_index = start_index
        self.modality = modality
        self.on_error = on_error
        self.max_refetch = max_refetch
        self.pipeline = pipeline if callable(pipeline) else build_pipeline(pipeline)
        self.samples: list[dict[str, Any]] = self.load_samples()
        if not self.samples:
            raise InputError(f"{type(self).__name__}: no samples found ({self.describe_source()})")
        self._check_labels()
        self.failures: list[tuple[str, str]] = []
        self._warned: set[str] = set()
        # one failure counter per process (slot 0: main, 1..: workers) in shared memory, so the main process
        # sees the workers' counts without any locking
        self._failure_counts = torch.zeros(_MAX_WORKER_SLOTS, dtype=torch.int64).share_memory_()
        # what each process is reading now: [slot] = (sample index + 1, start time in ms; 0 when idle), so that a
        # stalled DataLoader can name the file a worker is stuck on (lateral.data.loader)
        self._reads_now = torch.zeros(_MAX_WORKER_SLOTS, 2, dtype=torch.int64).share_memory_()

    @abc.abstractmethod
    def load_samples(self) -> list[dict[str, Any]]:
        """Read the annotation source into sample dicts (each dataset format implements this)."""

    def describe_source(self) -> str:
        return ""

    def _check_labels(self) -> None:
        if self.num_classes is None:
            return
        for sample in self.samples:
            labels = sample.get("label")
            labels = labels if isinstance(labels, list) else [labels]
            for label in labels:
                if label is not None and label >= 0 and label >= self.num_classes:
                    raise InputError(
                        f"{sample.get('filename', sample.get('frame_dir'))}: label {label} is out of "
                        f"range for num_classes={self.num_classes}"
                    )

    def __len__(self) -> int:
        return len(self.samples)

    def get_data_info(self, index: int) -> dict[str, Any]:
        """The results dict the pipeline starts from for sample ``index``."""
        results = dict(self.samples[index])
        if self.multi_class:
            assert self.num_classes is not None  # __init__ requires it with multi_class
            onehot = np.zeros(self.num_classes, dtype=np.float32)
            onehot[results["label"]] = 1.0
            results["label"] = onehot
        results["start_index"] = self.start_index
        results["modality"] = self.modality
        results["test_mode"] = self.test_mode
        return results

    def _source_of(self, index: int) -> str:
        sample = self.samples[index]
        return str(sample.get("filename", sample.get("frame_dir", index)))

    def _record_failure(self, index: int, reason: str) -> None:
        path = self._source_of(index)
        self.failures.append((path, reason))
        self._failure_counts[_process_slot()] += 1
        if path not in self._warned:
            self._warned.add(path)
            logger.warning("skipping unreadable sample %s: %s", path, reason)

    @property
    def num_failures(self) -> int:
        """Samples that could not be read so far, summed over this process and its DataLoader workers."""
        return int(self._failure_counts.sum())

    def failure_summary(self) -> str:
        """One line for the end of an epoch, plus the reasons recorded in this process."""
        count = self.num_failures
        if not count:
            return f"all {len(self)} samples readable"
        lines = [f"{count} sample reads failed (of {len(self)} samples; each bad file is logged once)"]
        seen: dict[str, str] = {}
        for path, reason in self.failures:
            seen.setdefault(path, reason)
        lines += [f"  {path}: {reason}" for path, reason in list(seen.items())[:20]]
        if len(seen) > 20:
            lines.append(f"  ... and {len(seen) - 20} more files")
        return "\n".join(lines)

    def _load(self, index: int) -> dict[str, Any] | None:
        results = self.get_data_info(index)
        try:
            out = self.pipeline(results)
        except DecodeError as err:
            close_reader(results)
            if self.on_error == "raise":
                raise
            self._record_failure(index, err.reason)
            return None
        if out is None:
            self._record_failure(index, "the pipeline returned None")
            return None
        return ensure_inputs(out)

    def reads_in_progress(self) -> list[tuple[str, str, float]]:
        """``(process, file, seconds)`` for every process (``'main process'`` or ``'worker N'``) that is reading a
        sample of this dataset right now, longest first."""
        now_ms = int(time.time() * 1000)
        reads = []
        for slot, (index_plus_one, start_ms) in enumerate(self._reads_now.tolist()):
            if index_plus_one:
                process = "main process" if slot == 0 else f"worker {slot - 1}"
                reads.append((process, self._source_of(index_plus_one - 1), (now_ms - start_ms) / 1000))
        return sorted(reads, key=lambda read: -read[2])

    def _load_recorded(self, index: int) -> dict[str, Any] | None:
        slot = _process_slot()
        self._reads_now[slot] = torch.tensor([index + 1, int(time.time() * 1000)])
        try:
            return self._load(index)
        finally:
            self._reads_now[slot] = 0

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self._load_recorded(index)
        if item is None and self.on_error == "next":
            for step in range(1, self.max_refetch + 1):
                item = self._load_recorded((index + step) % len(self))
                if item is not None:
                    break
        return item


def check_label_range(
    dataset: torch.utils.data.Dataset, num_classes: int, where: str, allow_unlabelled: bool = True
) -> None:
    """Raise a ConfigError if a sample of ``dataset`` has a label outside ``0 .. num_classes - 1``.

    Run before training or testing: such a label would otherwise stop the run only when the loss or the confusion
    matrix meets it, possibly after hours of training. Label -1 (an unlabelled test sample) is allowed when
    ``allow_unlabelled`` (evaluation), not for training data.
    """
    lowest = -1 if allow_unlabelled else 0
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return
    bad = []
    for sample in samples:
        labels = sample.get("label")
        for label in labels if isinstance(labels, list) else [labels]:
            if label is not None and (label >= num_classes or label < lowest):
                bad.append(f"{sample.get('filename', sample.get('frame_dir'))}: label {label}")
    if bad:
        shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        unlabelled = " (-1, unlabelled, is allowed in test and validation lists only)" if lowest == 0 else ""
        raise ConfigError(
            f"{where}: {len(bad)} sample(s) have labels outside 0..{num_classes - 1}{unlabelled}, but the model has "
            f"num_classes={num_classes} (model.cls_head.num_classes):\n  {shown}\n"
            "Set cls_head.num_classes to the number of classes in the lists, or fix the lists."
        )


def count_labelled(dataset: torch.utils.data.Dataset) -> int | None:
    """How many samples of ``dataset`` carry a label (not -1, not an empty multi-label list); None if unknown."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return None
    return sum(1 for sample in samples if sample.get("label") not in (None, -1, []))


def _parse_label(token: str, where: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise InputError(f"{where}: label '{printable(token)}' is not an integer") from None


def _read_lines(ann_file: Path) -> list[tuple[int, str]]:
    lines = []
    for number, line in enumerate(read_text(ann_file, "ann_file").splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append((number, line))
    return lines


class VideoDataset(BaseActionDataset):
    """Videos listed as ``path label`` lines (mmaction2 ``VideoDataset``).

    Args:
        ann_file: the list file. With ``multi_class``: ``path label1 label2 ...``. Paths may contain spaces when
            the delimiter is a space (the label is the last field). In ``test_mode`` a line may omit the label
            (label -1).
        pipeline: step dicts.
        data_prefix: ``dict(video=FOLDER)`` (or a folder) the paths are relative to.
        delimiter: field separator.
        Other arguments: see :class:`BaseActionDataset`.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        pipeline: Sequence[dict],
        data_prefix: dict | str | None = None,
        test_mode: bool = False,
        multi_class: bool = False,
        num_classes: int | None = None,
        start_index: int = 0,
        modality: str = "RGB",
        delimiter: str = " ",
        on_error: str = "none",
        max_refetch: int = 10,
    ):
        self.ann_file = _check_file(ann_file, "ann_file")
        self.data_prefix = _prefix(data_prefix, "video")
        _check_dir(self.data_prefix, "data_prefix video folder")
        self.delimiter = delimiter
        super().__init__(pipeline, test_mode, multi_class, num_classes, start_index, modality, on_error, max_refetch)

    def describe_source(self) -> str:
        return f"ann_file '{self.ann_file}' has no entries"

    def _join(self, name: str) -> str:
        return str(self.data_prefix / name) if self.data_prefix is not None else name

    def load_samples(self) -> list[dict[str, Any]]:
        samples: list[dict[str, Any]] = []
        for number, line in _read_lines(self.ann_file):
            where = f"{self.ann_file}:{number}"
            if self.multi_class:
                fields = line.split(self.delimiter)
                filename, labels = fields[0], [_parse_label(t, where) for t in fields[1:] if t]
                if not labels and not self.test_mode:
                    raise InputError(f"{where}: expected 'path label [label ...]', got '{printable(line)}'")
                samples.append(dict(filename=self._join(filename), label=labels))
                continue
            fields = line.rsplit(self.delimiter, 1)
            if len(fields) == 2 and re.fullmatch(r"-?\d+", fields[1].strip()):
                samples.append(dict(filename=self._join(fields[0].strip()), label=int(fields[1])))
            elif self.test_mode:
                samples.append(dict(filename=self._join(line), label=-1))
            else:
                raise InputError(f"{where}: expected 'path label', got '{printable(line)}'")
        return samples


class RawframeDataset(BaseActionDataset):
    """Frame folders listed as ``frame_dir total_frames label`` lines (mmaction2 ``RawframeDataset``).

    Args:
        ann_file: the list file (``frame_dir offset total_frames label`` with ``with_offset``; more labels with
            ``multi_class``).
        pipeline: step dicts (with ``RawFrameDecode``).
        data_prefix: ``dict(img=FOLDER)`` (or a folder) the frame folders are relative to.
        filename_tmpl: image name of frame ``i``.
        with_offset: lines carry an offset of the first frame.
        start_index: index of the first image (1 in mmaction2's rawframes).
        Other arguments: see :class:`BaseActionDataset`.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        pipeline: Sequence[dict],
        data_prefix: dict | str | None = None,
        test_mode: bool = False,
        filename_tmpl: str = "img_{:05}.jpg",
        with_offset: bool = False,
        multi_class: bool = False,
        num_classes: int | None = None,
        start_index: int = 1,
        modality: str = "RGB",
        on_error: str = "none",
        max_refetch: int = 10,
    ):
        self.ann_file = _check_file(ann_file, "ann_file")
        self.data_prefix = _prefix(data_prefix, "img")
        _check_dir(self.data_prefix, "data_prefix img folder")
        self.filename_tmpl = filename_tmpl
        self.with_offset = with_offset
        super().__init__(pipeline, test_mode, multi_class, num_classes, start_index, modality, on_error, max_refetch)

    def describe_source(self) -> str:
        return f"ann_file '{self.ann_file}' has no entries"

    def load_samples(self) -> list[dict[str, Any]]:
        samples = []
        first_label = 3 if self.with_offset else 2
        for number, line in _read_lines(self.ann_file):
            where = f"{self.ann_file}:{number}"
            fields = line.split()
            if len(fields) < first_label + (0 if self.test_mode else 1):
                layout = "frame_dir offset total_frames label" if self.with_offset else "frame_dir total_frames label"
                raise InputError(f"{where}: expected '{layout}', got '{printable(line)}'")
            frame_dir = str(self.data_prefix / fields[0]) if self.data_prefix is not None else fields[0]
            sample: dict[str, Any] = dict(frame_dir=frame_dir, filename_tmpl=self.filename_tmpl)
            if self.with_offset:
                sample["offset"] = _parse_label(fields[1], where)
            sample["total_frames"] = _parse_label(fields[first_label - 1], where)
            labels = [_parse_label(t, where) for t in fields[first_label:]]
            if self.multi_class:
                sample["label"] = labels
            else:
                if len(labels) > 1:
                    raise InputError(f"{where}: {len(labels)} labels on a line; set multi_class=True")
                sample["label"] = labels[0] if labels else -1
            samples.append(sample)
        return samples


def find_video_files(root: Path) -> list[Path]:
    """Every file under ``root`` with a video suffix (see ``VIDEO_EXTENSIONS``), sorted."""
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(VIDEO_EXTENSIONS):
                found.append(Path(folder) / name)
    return sorted(found)


class KineticsCSVDataset(BaseActionDataset):
    """Kinetics clips from the official CSV (``label,youtube_id,time_start,time_end,split``).

    Clips are found by name, ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>`` (or ``<youtube_id>.<ext>``),
    anywhere under the data folder. Rows whose clip was never downloaded are left out and listed in
    ``dataset.missing`` (Kinetics always has some).

    Args:
        ann_file: the CSV.
        pipeline: step dicts.
        data_prefix: ``dict(video=FOLDER)`` holding the clips.
        label_map: class names in index order (see :func:`load_label_map`); by default the sorted labels of the
            CSV. Give it for train and val alike so both use the same indices.
        Other arguments: see :class:`BaseActionDataset`.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        pipeline: Sequence[dict],
        data_prefix: dict | str | None = None,
        label_map: str | os.PathLike | None = None,
        test_mode: bool = False,
        num_classes: int | None = None,
        start_index: int = 0,
        modality: str = "RGB",
        on_error: str = "none",
        max_refetch: int = 10,
    ):
        self.ann_file = _check_file(ann_file, "ann_file")
        video_root = _prefix(data_prefix, "video")
        if video_root is None:
            raise ConfigError("KineticsCSVDataset needs data_prefix=dict(video=FOLDER)")
        self.data_prefix = video_root
        _check_dir(self.data_prefix, "data_prefix video folder")
        self.classes = load_label_map(label_map) if label_map is not None else None
        self.missing: list[str] = []
        super().__init__(pipeline, test_mode, False, num_classes, start_index, modality, on_error, max_refetch)

    def describe_source(self) -> str:
        return (
            f"none of the clips of '{self.ann_file}' is under '{self.data_prefix}' "
            f"({len(self.missing)} rows, none downloaded)"
        )

    def load_samples(self) -> list[dict[str, Any]]:
        rows = list(csv.DictReader(io.StringIO(read_text(self.ann_file, "ann_file"), newline="")))
        required = {"youtube_id", "time_start", "time_end"}
        if not rows or not required <= set(rows[0]):
            raise InputError(
                f"{self.ann_file}: expected a CSV with columns label,youtube_id,time_start,time_end,"
                f"split; got {list(rows[0]) if rows else 'no rows'}"
            )
        has_labels = "label" in rows[0]
        if self.classes is None:
            self.classes = sorted({row["label"] for row in rows}) if has_labels else []
        class_index = {name: i for i, name in enumerate(self.classes)}
        by_stem: dict[str, str] = {}
        for path in find_video_files(self.data_prefix):
            by_stem.setdefault(path.stem, str(path))
        samples = []
        for number, row in enumerate(rows, start=2):
            stem = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
            filename = by_stem.get(stem) or by_stem.get(row["youtube_id"])
            if filename is None:
                self.missing.append(stem)
                continue
            label = -1
            if has_labels and row["label"]:
                if row["label"] not in class_index:
                    raise InputError(
                        f"{self.ann_file}:{number}: label '{printable(row['label'])}' is not in the "
                        f"label map.{suggest(row['label'], class_index)}"
                    )
                label = class_index[row["label"]]
            samples.append(dict(filename=filename, label=label))
        if self.missing:
            logger.warning(
                "%s: %d of %d clips not found under %s (left out)",
                self.ann_file,
                len(self.missing),
                len(rows),
                self.data_prefix,
            )
        return samples


class ClassFolderDataset(BaseActionDataset):
    """One folder of videos per class (UCF101 / HMDB51 layout: ``ROOT/<class>/<video>``).

    Args:
        pipeline: step dicts.
        data_prefix: ``dict(video=ROOT)``.
        class_index: label map file (e.g. UCF101 ``classInd.txt``); by default the sorted folder names.
        ann_file: optional split list (``<class>/<video> [label]`` lines, as UCF101 ``trainlist01.txt``); the
            class always comes from the folder name. By default every video under ``ROOT``.
        Other arguments: see :class:`BaseActionDataset`.
    """

    def __init__(
        self,
        pipeline: Sequence[dict],
        data_prefix: dict | str | None = None,
        class_index: str | os.PathLike | None = None,
        ann_file: str | os.PathLike | None = None,
        test_mode: bool = False,
        num_classes: int | None = None,
        start_index: int = 0,
        modality: str = "RGB",
        on_error: str = "none",
        max_refetch: int = 10,
    ):
        video_root = _prefix(data_prefix, "video")
        if video_root is None:
            raise ConfigError("ClassFolderDataset needs data_prefix=dict(video=ROOT)")
        self.data_prefix = video_root
        _check_dir(self.data_prefix, "data_prefix video folder")
        self.ann_file = _check_file(ann_file, "ann_file") if ann_file is not None else None
        self.classes = (
            load_label_map(class_index)
            if class_index is not None
            else sorted(p.name for p in self.data_prefix.iterdir() if p.is_dir())
        )
        super().__init__(pipeline, test_mode, False, num_classes, start_index, modality, on_error, max_refetch)

    def describe_source(self) -> str:
        source = f"split list '{self.ann_file}'" if self.ann_file else f"class folders under '{self.data_prefix}'"
        return f"no videos in the {source}"

    def load_samples(self) -> list[dict[str, Any]]:
        class_index = {name: i for i, name in enumerate(self.classes)}
        if self.ann_file is not None:
            relative = [line.split()[0] for _, line in _read_lines(self.ann_file)]
        else:
            relative = [
                str(p.relative_to(self.data_prefix))
                for p in find_video_files(self.data_prefix)
                if len(p.relative_to(self.data_prefix).parts) == 2
            ]
        samples = []
        for rel in relative:
            class_name = Path(rel).parts[0]
            if class_name not in class_index:
                raise InputError(
                    f"video '{printable(rel)}' is in folder '{printable(class_name)}', which is not a "
                    f"known class.{suggest(class_name, class_index)}"
                )
            samples.append(dict(filename=str(self.data_prefix / rel), label=class_index[class_name]))
        return samples


# type name in configs -> dataset class
DATASET_TYPES: dict[str, type] = {
    "VideoDataset": VideoDataset,
    "RawframeDataset": RawframeDataset,
    "KineticsCSVDataset": KineticsCSVDataset,
    "ClassFolderDataset": ClassFolderDataset,
}

# keys mmaction2/mmengine dataset dicts carry that do not change what lateral loads
_IGNORED_DATASET_KEYS = {
    "serialize_data",
    "lazy_init",
    "metainfo",
    "filter_cfg",
    "indices",
    "power",
    "sample_by_class",
    "dynamic_length",
}


def build_dataset(cfg: dict, where: str = "dataset") -> BaseActionDataset:
    """Build a dataset from an mmaction2 dataset dict (see the module docstring for the types).

    Args:
        cfg: ``dict(type='VideoDataset', ann_file=..., pipeline=[...], ...)``.
        where: where ``cfg`` sits in the config (``'train_dataloader.dataset'``), for messages.

    Raises:
        ConfigError: unknown ``type`` or key (the closest name is suggested).
        FileNotFoundError: the ann_file or the data folder does not exist (checked before any decoding).
        ValueError: the dataset is empty or a list line is malformed.
    """
    if isinstance(cfg, dict):
        cfg = {k: v for k, v in cfg.items() if k not in _IGNORED_DATASET_KEYS}
        if isinstance(cfg.get("pipeline"), (list, tuple)):  # built here so that its errors say where the steps are
            cfg["pipeline"] = build_pipeline(cfg["pipeline"], f"{where}.pipeline")
    return build_from_table(DATASET_TYPES, cfg, where)
