"""Reading config files: ``_base_`` inheritance, merging, ``--cfg-options`` overrides, and writing configs back.

A config file is mmaction2's Python-dict syntax, parsed with :mod:`ast` and given its values by the sandboxed
:class:`~lateral.config.evaluator.Evaluator`: nothing in the file is executed, so a config downloaded from anywhere
is safe to read.

``_base_ = [...]`` inheritance merges dicts recursively (a child's ``_delete_=True`` replaces instead of merging),
as mmengine does.
"""

from __future__ import annotations

import ast
import copy
import os
import pprint
from pathlib import Path
from typing import Any

from lateral.config.evaluator import Evaluator
from lateral.config.validate import KNOWN_TOP_LEVEL_KEYS, ConfigError, suggest
from lateral.textfile import TextFileError, read_text

__all__ = ["load_config", "merge_dicts", "parse_cfg_value", "apply_cfg_options", "write_config"]

_MAX_FILE_BYTES = 10_000_000  # a larger file is refused before it is read: far beyond any real config

# Bounds on _base_ inheritance (mmaction2's own configs go 4 files deep and list at most 4 bases): each file is read
# once per load, so the work grows with the entries followed, not with the paths through them
_MAX_BASE_DEPTH = 32  # files in one chain of _base_ files (a.py -> b.py -> ...)
_MAX_BASE_ENTRIES = 1000  # _base_ entries followed in one load, repeats included


class _ConfigLoad:
    """One :func:`load_config` call: the configs of the files read so far, the chain of ``_base_`` files being read,
    and the ``_base_`` entries followed.

    A file listed by several others (or several times) is read once: five files each listing the next 1000 times
    would otherwise be read 10^12 times.
    """

    def __init__(self) -> None:
        self.done: dict[Path, dict[str, Any]] = {}
        self.chain: list[Path] = []
        self.base_entries = 0

    def config(self, path: Path) -> dict[str, Any]:
        """The config of ``path`` (resolved) with its ``_base_`` files merged in."""
        if path in self.chain:
            raise ConfigError(f"_base_ cycle: {' -> '.join(str(p) for p in self.chain + [path])}")
        if path in self.done:
            return self.done[path]
        if path.suffix != ".py":
            raise ConfigError(f"config files are Python-dict files ending in .py, got {path}")
        if len(self.chain) >= _MAX_BASE_DEPTH:
            first = " -> ".join(p.name for p in self.chain[:3])
            raise ConfigError(
                f"{self.chain[0]}: its _base_ files nest more than {_MAX_BASE_DEPTH} deep ({first} -> "
                f"... -> {self.chain[-1].name} -> {path.name}); a config may inherit through a chain "
                f"of at most {_MAX_BASE_DEPTH} files"
            )
        self.chain.append(path)
        try:
            base_cfg, own = _parse_file(path, self)
        finally:
            self.chain.pop()
        self.done[path] = merge_dicts(base_cfg, own)
        return self.done[path]

    def follow(self, path: Path, count: int) -> None:
        """Count the ``count`` ``_base_`` entries of ``path`` against the load's bound."""
        self.base_entries += count
        if self.base_entries > _MAX_BASE_ENTRIES:
            raise ConfigError(
                f"{path}: with its {count} _base_ entries, reading {self.chain[0]} follows more than "
                f"{_MAX_BASE_ENTRIES} _base_ entries in all (repeats included), more than a config may"
            )


def _parse_file(path: Path, load: _ConfigLoad) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (merged base config, names the file itself assigns); base names are readable in the file."""
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {size} bytes is too large for a config file (at most {_MAX_FILE_BYTES})")
        source = read_text(path, "config file")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except TextFileError as err:
        raise ConfigError(str(err)) from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid Python syntax: {err.msg}") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"{path}: nested too deeply to be read as a config") from None
    try:
        return _run_statements(tree, path, load)
    except RecursionError:  # an expression nested thousands deep (1 + 1 + ... or [[[...]]])
        raise ConfigError(f"{path}: an expression is nested too deeply to be read as a config") from None


def _run_statements(tree: ast.Module, path: Path, load: _ConfigLoad) -> tuple[dict[str, Any], dict[str, Any]]:
    names: dict[str, Any] = {}
    base_cfg: dict[str, Any] = {}
    evaluator = Evaluator(str(path), names)
    for stmt in tree.body:
        try:
            bases = _run_statement(stmt, evaluator, names, path, load)
        except ConfigError:
            raise
        except (TypeError, ValueError, ArithmeticError, LookupError) as err:  # list(5), {[1]: 2}, -'a', dict(**{1: 2})
            raise ConfigError(f"{path}:{stmt.lineno}: cannot compute this value: {type(err).__name__}: {err}") from None
        except MemoryError:
            raise ConfigError(f"{path}:{stmt.lineno}: this value is too large for a config") from None
        if bases is not None:
            base_cfg = bases
    return base_cfg, {k: v for k, v in names.items() if k in evaluator.own_names}


def _run_statement(
    stmt: ast.stmt, evaluator: Evaluator, names: dict[str, Any], path: Path, load: _ConfigLoad
) -> dict[str, Any] | None:
    """Run one top-level statement of a config file; an assignment to ``_base_`` also reads the files it names.

    Returns:
        The merged config of the ``_base_`` files when the statement assigns ``_base_``, else None.
    """
    evaluator.execute(stmt)
    if not (isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_base_" for t in stmt.targets)):
        return None
    base_cfg = _load_bases(path, names.pop("_base_"), load)
    own = dict(names)
    names.clear()
    names.update(copy.deepcopy(base_cfg))
    names.update(own)
    evaluator.own_names = set(own)
    return base_cfg


def _load_bases(path: Path, bases: Any, load: _ConfigLoad) -> dict[str, Any]:
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, (list, tuple)):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names")
    load.follow(path, len(bases))
    cfg: dict[str, Any] = {}
    for base in bases:
        if not (path.parent / base).is_file():
            raise ConfigError(f"{path}: _base_ file not found: {path.parent / base}")
        # a base listed twice, or two bases sharing a base with settings, define its names twice: refused, as
        # mmengine refuses duplicate keys among the bases of one file
        base_cfg = load.config((path.parent / base).resolve())
        overlap = set(cfg) & set(base_cfg)
        if overlap:
            raise ConfigError(f"{path}: the _base_ files define {sorted(overlap)} more than once")
        cfg.update(base_cfg)
    return cfg


def merge_dicts(base: dict, child: dict) -> dict:
    """Merge ``child`` into a copy of ``base`` recursively; ``_delete_=True`` in a child dict replaces it whole."""
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop("_delete_", False)
            if not delete and isinstance(merged.get(key), dict):
                merged[key] = merge_dicts(merged[key], value)
            else:
                merged[key] = _strip_delete(value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _strip_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != "_delete_"}
    if isinstance(value, list):
        return [_strip_delete(v) for v in value]
    return value


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a config file (and its ``_base_`` files) into a plain dict of its top-level names.

    Args:
        path: the ``.py`` config file.

    Returns:
        A dict such as ``{'model': {...}, 'train_pipeline': [...], ...}``; ``_base_`` is resolved and removed.

    Raises:
        ConfigError: for a missing file, a file that is not UTF-8 text (or UTF-16 with a byte-order mark), a cycle in
            ``_base_``, a chain of more than 32 ``_base_`` files or more than 1000 ``_base_`` entries in all, or any
            construct that is not data.
    """
    return _ConfigLoad().config(Path(path).resolve())


def parse_cfg_value(text: str) -> Any:
    """Read the value of a ``--cfg-options key=value`` pair: a Python literal if it is one (``true``, ``false`` and
    ``none`` in any case too, as mmengine reads them), else a string."""
    words = {"true": True, "false": False, "none": None}
    if text.strip().lower() in words:
        return words[text.strip().lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if "," in text:
            return [parse_cfg_value(t) for t in text.split(",")]
        return text


_PIPELINE_NAMES = ("train_pipeline", "val_pipeline", "test_pipeline")
# known top-level names that only feed other settings while the file is read (mmaction2's variables)
_FILE_VARIABLES = (
    "dataset_type",
    "data_root",
    "data_root_val",
    "ann_file_train",
    "ann_file_val",
    "ann_file_test",
    "file_client_args",
)


def apply_cfg_options(cfg: dict, options: list[str] | dict[str, Any]) -> dict:
    """Apply ``a.b.c=value`` overrides (list indices allowed: ``train_pipeline.1.clip_len=16``) to a copy of cfg."""
    cfg = copy.deepcopy(cfg)
    if isinstance(options, dict):
        items = list(options.items())
    else:
        items = []
        for option in options:
            if "=" not in option:
                raise ConfigError(f"--cfg-options expects key=value, got '{option}'")
            key, text = option.split("=", 1)
            items.append((key, parse_cfg_value(text)))
    for key, value in items:
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--cfg-options '{key}={value}': the key has an empty part (write a.b.c=value)")
        top = parts[0]
        # a dataloader built from `pipeline=train_pipeline` holds a copy: an override of the named pipeline goes
        # to every copy still equal to it, as a reader of the config file expects
        copies = []
        if top in _PIPELINE_NAMES and top not in cfg and len(parts) > 1:
            loader = top.replace("_pipeline", "_dataloader")
            raise ConfigError(
                f"--cfg-options {key}: the config has no top-level '{top}' (its pipeline is written "
                f"inside {loader}): set {loader}.dataset.pipeline.{'.'.join(parts[1:])} instead"
            )
        if top in _PIPELINE_NAMES and top in cfg:
            copies = [
                loader["dataset"]
                for loader in cfg.values()
                if isinstance(loader, dict)
                and isinstance(loader.get("dataset"), dict)
                and loader["dataset"].get("pipeline") == cfg[top]
            ]
        if top not in cfg and top not in KNOWN_TOP_LEVEL_KEYS:
            # the config file has been evaluated already, so a new top-level name could change nothing: it is a
            # typo or a setting that lives deeper (max_epochs -> train_cfg.max_epochs)
            deeper = _paths_ending_in(cfg, top)
            hint = (
                f" Did you mean {' or '.join(deeper[:3])}?" if deeper else suggest(top, [*cfg, *KNOWN_TOP_LEVEL_KEYS])
            )
            raise ConfigError(
                f"--cfg-options {key}: the config has no top-level '{top}', and lateral reads no such setting.{hint}"
            )
        deeper = _paths_ending_in(cfg, top) if len(parts) == 1 and top in cfg else []
        if len(parts) == 1 and top in cfg and (top in _FILE_VARIABLES or (deeper and top not in KNOWN_TOP_LEVEL_KEYS)):
            # a variable of the file (clip_len = 8, data_root = ...) was copied into the settings built from it when
            # the file was read: setting the variable now would leave them as they are
            where = (
                f"set {', '.join(deeper[:4])}{', ...' if len(deeper) > 4 else ''} instead"
                if deeper
                else "set the settings built from it instead (e.g. the dataloaders' ann_file and data_prefix)"
            )
            raise ConfigError(
                f"--cfg-options {key}: '{top}' is a variable of the config file, already written into "
                f"the settings that use it, so overriding it alone would change nothing; {where}"
            )
        node = cfg
        for i, part in enumerate(parts[:-1]):
            node = _step(node, part, ".".join(parts[: i + 1]), create=True)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            parent = ".".join(parts[:-1])
            raise ConfigError(f"--cfg-options {key}: '{parent}' is {node!r}, not a dict or list to set '{last}' in")
        for dataset in copies:
            dataset["pipeline"] = copy.deepcopy(cfg[top])
    return cfg


def _paths_ending_in(node: Any, name: str, prefix: str = "", depth: int = 0) -> list[str]:
    """Dotted paths of the keys called ``name`` inside ``node`` (list items by index), shallowest first."""
    if depth > 6:
        return []
    found, deeper = [], []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        path = f"{prefix}{key}"
        if key == name and prefix:
            found.append(path)
        deeper += _paths_ending_in(child, name, path + ".", depth + 1)
    return found + deeper


def _index(node: list, part: str, key: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"--cfg-options {key}: '{part}' indexes a list and must be a number") from None
    if not -len(node) <= index < len(node):
        raise ConfigError(f"--cfg-options {key}: index {index} out of range for a list of {len(node)}")
    return index


def _step(node: Any, part: str, key: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, key)]
    if isinstance(node, dict):
        if part not in node:
            if not create:
                raise ConfigError(f"no config key '{key}'." + suggest(part, node))
            node[part] = {}
        return node[part]
    raise ConfigError(f"--cfg-options: '{key}' is not a dict or list")


def write_config(cfg: dict[str, Any], path: str | os.PathLike, title: str = "") -> None:
    """Write ``cfg`` as a config file that :func:`load_config` reads back to an equal dict (literals only)."""
    lines = [f'"""{title}"""', ""] if title else []
    for key, value in cfg.items():
        if not key.isidentifier():
            raise ConfigError(f"config key '{key}' is not a valid name for a config file")
        lines.append(f"{key} = {pprint.pformat(value, width=110, sort_dicts=False)}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
