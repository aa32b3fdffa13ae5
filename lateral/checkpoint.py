"""Reading, checking and writing checkpoints.

Files are read with ``torch.load(weights_only=True)``: a checkpoint can hold tensors and plain containers, never
code. Before loading, the CRC-32 of every member of the zip archive torch.save wrote is checked (torch.load itself
does not check them, so a file damaged on disk or in a copy would load with wrong tensors). Loading reports every
missing, unexpected and shape-mismatched key in one error. Writing is atomic: the file is written next to its
destination and moved into place, so an interrupted save leaves the previous file intact.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from lateral.errors import LateralError

__all__ = [
    "CheckpointError",
    "read_checkpoint",
    "read_state_dict",
    "load_checkpoint",
    "remove_partial_checkpoints",
    "save_checkpoint",
    "local_checkpoint_path",
    "load_pretrained",
    "unfilled_keys",
    "verify_checkpoint",
    "nonfinite_tensors",
]

_STATE_DICT_KEYS = ("state_dict", "model_state", "model", "module")
# buffers that mmaction2 / mmengine may store but that carry nothing a lateral model needs
_IGNORABLE_PREFIXES = ("data_preprocessor.",)


class CheckpointError(LateralError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message lists every problem."""


def local_checkpoint_path(value: Any, key: str) -> Path:
    """The file a ``pretrained`` / ``init_cfg.checkpoint`` / ``load_from`` setting names, checked to exist.

    Raises:
        CheckpointError: a URL or model-zoo name (lateral downloads nothing), a value that is not a path, or a
            file that does not exist.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise CheckpointError(f"{key} must be the path of a checkpoint file, got {type(value).__name__} {value!r}")
    text = str(value)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        hint = ""
        if scheme == "torchvision":
            arch = text.split("://", 1)[1]
            hint = (
                f" For torchvision's {arch}: torch.save(torchvision.models.{arch}(weights='DEFAULT').state_dict(), "
                f"'{arch}.pth') on a machine with internet, then {key}='{arch}.pth' (2D weights are inflated)."
            )
        raise CheckpointError(
            f"{key}='{text}': lateral does not download weights (nothing is fetched at run time). "
            f"Download the file once and set {key} to its local path.{hint}"
        )
    path = Path(text).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{key}: checkpoint file not found: {path}")
    return path


def unfilled_keys(own: dict[str, torch.Tensor], report: dict[str, Any]) -> list[str]:
    """The model keys a non-strict :func:`load_checkpoint` left as initialised (classifier tensors it dropped on
    purpose and BatchNorm's num_batches_tracked, which BatchNorm fills itself, are no gap)."""
    filled = set(report["loaded"]) | set(report.get("dropped", []))
    return [k for k in own if k not in filled and not k.endswith("num_batches_tracked")]


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    key: str,
    prefix: str | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Fill ``model`` from a checkpoint that may cover only part of it (mmengine ``init_cfg=dict(type='Pretrained')``
    semantics: non-strict), but never silently load nothing.

    Args:
        prefix: keep only the checkpoint keys that start with it, stripped (``'backbone.'``); a checkpoint saved
            from a wrapper (``module.``) is unwrapped first.
        state: the file's state dict, if the caller has read it already.

    Returns:
        The :func:`load_checkpoint` report (``loaded``: the model keys filled).

    Raises:
        CheckpointError: not one tensor of the checkpoint fits the model (the message shows both sides' keys).
    """
    path = local_checkpoint_path(path, key)
    state = read_state_dict(path) if state is None else state
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."  # 'backbone' means 'backbone.', as in mmengine
        if prefix.startswith("module.") and not any(k.startswith(prefix) for k in state):
            prefix = prefix[len("module.") :]  # read_state_dict has unwrapped the DDP prefix already
        selected = OrderedDict((k[len(prefix) :], v) for k, v in state.items() if k.startswith(prefix))
        if not selected:
            raise CheckpointError(
                f"{key}: {path} has no key starting with prefix '{prefix}' (its first keys: {list(state)[:4]})"
            )
        state = selected
    report = load_checkpoint(model, state, strict=False, source=str(path))
    own = model.state_dict()
    if not report["loaded"]:
        raise CheckpointError(
            f"{key}: not one tensor of {path} fits {type(model).__name__}: its keys look like "
            f"{list(state)[:3]}, the model's like {list(own)[:3]}"
        )
    kept = unfilled_keys(own, report)
    if kept:
        shown = ", ".join(kept[:5]) + (", ..." if len(kept) > 5 else "")
        warnings.warn(
            f"{key}: {path} filled {len(report['loaded'])} of {len(own)} tensors of "
            f"{type(model).__name__}; {len(kept)} keep their initialisation ({shown})",
            stacklevel=2,
        )
    return report


# torch.save's legacy (non-zip) format pickles this number first; pickle writes it as LONG1 with 10 bytes
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file safely (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(32)
    # torch.save writes a zip archive (PK..) or, in the legacy format, a pickle that starts with torch's magic number
    if head[:1] == b"\x80" and _LEGACY_MAGIC not in head:
        raise CheckpointError(
            f"{path} is a plain Python pickle, not a file torch.save wrote (Caffe2 and Detectron weights, e.g. "
            "PySlowFast's .pkl files, are such pickles); lateral reads PyTorch checkpoints (.pth/.pyth): convert the "
            "weights to PyTorch with the tools of the project that wrote them"
        )
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        kind = "an empty file" if not head else f"a file starting with {head[:4]!r}"
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({kind}; torch.save writes a zip archive)")
    if head.startswith(b"PK\x03\x04"):
        verify_checkpoint(path)
    try:
        obj = _load_weights_only(path, map_location)
    except pickle.UnpicklingError as err:
        blocked = [name for name in _blocked_globals(path) if not _is_numpy_data(name)]
        blocked = blocked or re.findall(r"GLOBAL ([\w.]+)", str(err))  # the legacy format cannot be scanned
        what = f" ({', '.join(blocked[:5])})" if blocked else ""
        raise CheckpointError(
            f"{path} holds objects other than tensors, numpy arrays and plain containers{what}, so it was not "
            "loaded: reading it would run code from the file (torch.load weights_only=True refuses that). Re-save "
            "only its state_dict from a trusted environment."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {err!r}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    return obj


_VERIFY_CHUNK = 1 << 22  # 4 MiB: large enough that the Python loop costs nothing next to zlib.crc32


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Check the CRC-32 that torch.save stored for every member of a checkpoint's zip archive.

    ``torch.load`` reads the members without checking them: bytes changed on disk or in a copy come back as wrong
    tensor values, without an error. This reads the whole file once (a fraction of the time loading it takes).
    Files that ``torch.save`` wrote with ``compute_crc32=False`` (every stored CRC is 0) cannot be checked and are
    accepted; legacy (non-zip) files have no checksums and are not passed here.

    Raises:
        CheckpointError: naming the file and the first member whose bytes do not match its stored CRC-32, or what
            is wrong with the archive's structure (truncated, a damaged member header).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
        if all(info.CRC == 0 for info in members):  # written without checksums: nothing to compare with
            return
        with open(path, "rb") as handle:
            for info in members:
                _check_member(handle, info, path)
    except zipfile.BadZipFile as err:
        # the end of the archive (its table of contents) is gone or damaged: typically a file cut short
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): its zip structure is damaged ({err})"
        ) from None
    except OSError as err:
        raise CheckpointError(f"{path} could not be read to check it: {err!r}") from None


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then (after 22 bytes) the lengths of name and extra field


def _check_member(handle: BinaryIO, info: zipfile.ZipInfo, path: Path) -> None:
    """Read one member's bytes and compare their CRC-32 with the stored one; a CheckpointError naming it if not.

    torch.save stores members uncompressed, so their bytes are read straight from the file (zipfile's reader would
    compute the same CRC, but only reports a mismatch without the values).
    """
    if "/data/" in f"/{info.filename}":
        what = "tensor data"
    elif info.filename.endswith("data.pkl"):
        what = "the pickled structure"
    else:
        what = "archive metadata"
    damaged = f"{path} is damaged: its member '{info.filename}' ({what}, {info.file_size} bytes)"
    changed = "the file changed after torch.save wrote it (disk, copy or transfer error)"
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(
            f"{damaged} is compressed; torch.save stores members uncompressed, so this is not a "
            "file torch.save wrote (or it was repacked): re-save it with torch.save"
        )
    handle.seek(info.header_offset)
    header = handle.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or _LOCAL_HEADER.unpack(header)[0] != b"PK\x03\x04":
        raise CheckpointError(f"{damaged} has a damaged header; {changed}. Use another copy or an earlier checkpoint")
    _, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    handle.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
    computed, remaining = 0, info.file_size
    while remaining:
        chunk = handle.read(min(remaining, _VERIFY_CHUNK))
        if not chunk:
            break
        computed = zlib.crc32(chunk, computed)
        remaining -= len(chunk)
    if remaining or computed != info.CRC:
        found = f"{remaining} bytes missing" if remaining else f"CRC-32 {computed:#010x}, stored {info.CRC:#010x}"
        raise CheckpointError(
            f"{damaged} fails its CRC-32 check ({found}): {changed}, and it would load with wrong values. Use "
            "another copy or an earlier checkpoint"
        )


def _blocked_globals(path: Path) -> list[str]:
    """The classes and functions a checkpoint's pickle names beyond what ``weights_only`` allows by default."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a pickle that cannot even be scanned: report it without names
        return []


def _load_weights_only(path: Path, map_location) -> Any:
    """``torch.load(weights_only=True)``, and once more with numpy's data classes allowed by name when the first
    attempt meets them (mmcv writes numpy scalars into ``meta``, e.g. ``best_score``); nothing else is allowed."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def _is_numpy_data(name: str) -> bool:
    """Whether a pickle global only rebuilds numpy numbers or arrays (never code)."""
    if not name.startswith("numpy."):
        return False
    last = name.rsplit(".", 1)[-1]
    return (
        name in ("numpy.dtype", "numpy.ndarray")
        or last in ("scalar", "_reconstruct")
        and ".multiarray." in name
        or name.startswith("numpy.dtypes.")
        and last.endswith("DType")
        and last != "ObjectDType"
    )


def _numpy_data_globals() -> list[Any]:
    """What rebuilding numpy numbers and arrays names: ``dtype``, ``ndarray``, ``multiarray.scalar`` and
    ``_reconstruct`` (under ``numpy._core`` in numpy 2, ``numpy.core`` before), and the dtype classes of numbers,
    booleans and dates (``Float64DType``, ...); object, void and string dtypes are left out."""
    import importlib

    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    found: list[Any] = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    if dtypes is not None:
        found += [
            getattr(dtypes, name)
            for name in dir(dtypes)
            if name.endswith("DType") and name not in ("ObjectDType", "VoidDType", "StringDType")
        ]
    return found


def extract_state_dict(obj: dict[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint dict (mmaction2 ``state_dict``, PySlowFast ``model_state``, ...)."""
    for key in _STATE_DICT_KEYS:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    state = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    if not state:
        raise CheckpointError(f"{source} contains no tensors (top-level keys: {sorted(obj)[:10]})")
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel / DDP wrapper
        state = OrderedDict((k[len("module.") :], v) for k, v in state.items())
    return state


def read_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load the state dict of a checkpoint file, unwrapping ``state_dict`` / ``model_state`` / ``module.``."""
    return extract_state_dict(read_checkpoint(path, map_location), str(path))


def _is_head_key(key: str) -> bool:
    return key.startswith(("cls_head.", "fc_cls.", "head.", "roi_heads.box_predictor."))


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | dict,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    drop_mismatched_head: bool = False,
    strip_prefix: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into ``model``.

    Args:
        model: the module to fill.
        checkpoint: a file path, a checkpoint dict (``{'state_dict': ..., 'meta': ...}``) or a bare state dict.
        strict: raise if any key is missing or unexpected (shape mismatches always raise).
        map_location: where tensors are loaded.
        drop_mismatched_head: skip classifier tensors whose shape differs (fine-tuning to another number of
            classes) with a warning instead of raising; the model keeps its own initialisation for them.
        strip_prefix: load the part of the checkpoint under this prefix, stripped (``'backbone.'`` loads a
            recognizer checkpoint into a bare backbone; its ``cls_head.*`` keys are left out). Ignored when the
            model's own keys have the prefix.
        source: what error messages call the checkpoint (default: its path, or 'checkpoint dict').

    Returns:
        ``{'missing': [...], 'unexpected': [...], 'dropped': [...], 'loaded': [model keys filled],
        'meta': checkpoint meta or {}}``.

    Raises:
        CheckpointError: one error listing every missing, unexpected and shape-mismatched key.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_checkpoint fills an nn.Module, got {type(model).__name__}")
    if not isinstance(checkpoint, (str, os.PathLike, dict)):
        raise TypeError(f"load_checkpoint takes a file path or a checkpoint dict, got {type(checkpoint).__name__}")
    if source is None:
        source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint dict"
    obj = read_checkpoint(checkpoint, map_location) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    meta = obj.get("meta", {}) if isinstance(obj.get("meta"), dict) else {}
    state = extract_state_dict(obj, source)
    own = model.state_dict()
    if strip_prefix and not any(k.startswith(strip_prefix) for k in own):
        # the part of a bigger model under the prefix (the backbone of a recognizer): keys outside it (cls_head.*)
        # belong to the rest of that model, not to this one
        state = OrderedDict(
            (k[len(strip_prefix) :] if k.startswith(strip_prefix) else k, v)
            for k, v in state.items()
            if k.startswith(strip_prefix) or k in own
        )
    state = OrderedDict((k, v) for k, v in state.items() if not (k.startswith(_IGNORABLE_PREFIXES) and k not in own))

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched, dropped = [], []
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            if drop_mismatched_head and _is_head_key(key):
                dropped.append(key)
            else:
                mismatched.append(f"{key}: checkpoint {list(value.shape)}, model {list(own[key].shape)}")
    for key in dropped:
        del state[key]
    if dropped:
        warnings.warn(
            f"dropped {len(dropped)} head tensors whose shape differs from the model ({', '.join(dropped)}); "
            "they keep the model's initialisation",
            stacklevel=2,
        )
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(
            _mismatch_message(source, model, missing if strict else [], unexpected if strict else [], mismatched)
        )
    result = model.load_state_dict(state, strict=False)
    return {
        "missing": list(result.missing_keys),
        "unexpected": list(result.unexpected_keys),
        "dropped": dropped,
        "loaded": [k for k in state if k in own],
        "meta": meta,
    }


def _mismatch_message(source: str, model: nn.Module, missing: list, unexpected: list, mismatched: list) -> str:
    """The error for a checkpoint that does not fit: its first line says what is wrong and how to fix it, the lines
    after it list the keys (each list cut to its first few, with the count of the rest)."""

    def block(title: str, items: list, shown: int = 8) -> str:
        more = f"\n    ... and {len(items) - shown} more" if len(items) > shown else ""
        return f"  {title} ({len(items)}):\n" + "\n".join(f"    {i}" for i in items[:shown]) + more

    counts = ", ".join(
        f"{len(items)} {what}"
        for items, what in ((missing, "missing"), (unexpected, "unexpected"), (mismatched, "shape mismatched"))
        if items
    )
    parts = [
        f"{source} does not fit {type(model).__name__}: {_diagnosis(model, missing, unexpected, mismatched)}",
        f"  ({counts} tensors; details below)",
    ]
    if missing:
        parts.append(block("missing in the checkpoint", missing))
    if unexpected:
        parts.append(block("unexpected in the checkpoint", unexpected))
    if mismatched:
        parts.append(block("shape mismatch", mismatched))
    return "\n".join(parts)


def _diagnosis(model: nn.Module, missing: list, unexpected: list, mismatched: list) -> str:
    """One line: what the mismatch most likely means, and the fix."""
    stripped = {k.removeprefix("backbone.") for k in unexpected if k.startswith("backbone.")}
    if stripped and missing and len(stripped & set(missing)) >= len(missing) / 2:
        return "the checkpoint is a whole recognizer and the model a bare backbone: pass strip_prefix='backbone.'"
    if any(k.startswith(("blocks.", "s1.", "model_state")) for k in unexpected):
        return "this looks like a PyTorchVideo / PySlowFast checkpoint: convert it with 'lateral convert' first"
    only_head_differs = not missing and not unexpected and all(_is_head_key(m.split(":")[0]) for m in mismatched)
    if mismatched and only_head_differs:
        fine_tune = (
            "only the classifier differs: use drop_mismatched_head=True to fine-tune to another class count "
            "(load_from= in a training config does this)"
        )
        classes = _class_counts(mismatched)
        if classes is None:
            return fine_tune
        return (
            f"the checkpoint's classifier is for {classes[0]} classes and the model's for {classes[1]}; "
            f"{fine_tune}, or build the model with num_classes={classes[0]} to use the checkpoint as it is "
            f"(--cfg-options model.cls_head.num_classes={classes[0]})"
        )
    if len(missing) + len(unexpected) + len(mismatched) > 4:
        return (
            "the checkpoint comes from another architecture (depth, widths or pathways differ): use the config "
            "it was trained with, or a checkpoint that carries its config"
        )
    return "the keys below differ between the checkpoint and the model"


def _class_counts(mismatched: list[str]) -> tuple[int, int] | None:
    """(checkpoint, model) class counts from a classifier weight's shape-mismatch line, if there is one."""
    for line in mismatched:
        found = re.match(r"[\w.]*\.weight: checkpoint \[(\d+)(?:, \d+)*\], model \[(\d+)(?:, \d+)*\]$", line)
        if found:
            return int(found.group(1)), int(found.group(2))
    return None


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """The names of the floating-point tensors holding NaN or infinity in ``state``: a state dict, an optimizer
    state dict or any nesting of dicts, lists and tuples (``'state.3.momentum_buffer'`` names a nested one)."""
    if isinstance(state, torch.Tensor):
        finite = not (state.is_floating_point() or state.is_complex()) or bool(torch.isfinite(state).all())
        return [] if finite else [prefix or "tensor"]
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    found = []
    for key, value in items:
        found += nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def remove_partial_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`save_checkpoint` leaves in ``folder`` when the process is killed while
    writing (``.NAME.<random>.tmp``), and return their paths. Complete checkpoints are never touched."""
    removed = []
    for stale in sorted(Path(folder).glob(".*.pth.*.tmp")):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def _umask() -> int:
    """The process's umask (read by setting it, then putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the checkpoint a file name such as {path / 'model.pth'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file owner-only: a checkpoint gets the mode a plain file would (teammates read best.pth)
        os.chmod(tmp_name, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
