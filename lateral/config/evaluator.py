"""The sandboxed evaluator that gives the statements of a config file their values, without executing them.

A config file's syntax tree is walked node by node; only literals, ``dict()`` / ``list()`` / ``tuple()`` calls,
names assigned earlier in the same file, f-strings, subscripts and simple arithmetic have a value. Anything else
(imports, other calls, attributes, comprehensions, lambdas) is refused with the file and line. Bounds on the size
of what an expression builds keep a hostile file from hanging or exhausting the machine that reads it.
"""

from __future__ import annotations

import ast
import copy
import operator
import re
from collections.abc import Callable
from typing import Any

from lateral.config.validate import ConfigError, suggest

__all__ = ["Evaluator", "value_size"]

_BINARY_OPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
}
# Bounds on what a config expression may build, so that a file cannot hang or exhaust the machine that reads it
# (``10 ** 10 ** 9``, ``'a' * 10 ** 10``, ``f'{x:999999999}'``): far beyond any real setting.
_MAX_ITEMS = 1_000_000  # characters of a string, items of a list or tuple; also the most a value may hold, nested
# items and characters counted, and the most one statement may read through names (each read is a copy)
_MAX_INT_BITS = 10_000  # about 3000 digits: below Python's 4300-digit limit on printing an int
_MAX_FORMAT_WIDTH = 10_000
_MAX_FILE_READS = 5_000_000  # items copied out of names by all statements of one file: a few seconds at most
_CONSTRUCTORS = {"dict": dict, "list": list, "tuple": tuple}
# ast.FormattedValue.conversion codes
_CONVERSIONS: dict[int, Callable[[object], str]] = {ord("r"): repr, ord("s"): str, ord("a"): ascii}


def value_size(value: Any, limit: int) -> int:
    """Items of ``value``'s containers, nested ones included, plus the characters of its strings (so ``[0] * n``
    and ``'a' * n`` both count n); the count stops soon after it passes ``limit``, so a huge value costs no more
    than a small one."""
    total, pending = 0, [value]
    while pending and total <= limit:
        item = pending.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, dict):
            total += len(item)
            if total <= limit:
                pending.extend(item.keys())
                pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            if total <= limit:
                pending.extend(item)
    return total


class Evaluator:
    """Evaluates the statements and expression nodes allowed in a config file against the names defined so far.

    Args:
        path: the file, named in every error.
        names: the names defined so far (those of the ``_base_`` files included); assignments add to it.
    """

    def __init__(self, path: str, names: dict[str, Any]):
        self.path = path
        self.names = names
        self.own_names: set[str] = set()  # names the file assigns itself (the rest came from _base_)
        self.read_items = 0  # items copied out of names by the current statement (see _MAX_ITEMS)
        self.file_read_items = 0  # the same over the whole file (see _MAX_FILE_READS)

    def execute(self, stmt: ast.stmt) -> None:
        """Run one top-level statement of a config file: an assignment, or a docstring; anything else is refused.

        ``_base_ = [...]`` only binds ``_base_`` here: reading the files it names is the loader's work.
        """
        self.read_items = 0
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            return  # a docstring
        if isinstance(stmt, ast.Assign):
            value = self.eval(stmt.value)
            self._check_size(stmt, value)
            for target in stmt.targets:
                self._assign(target, value)
            for target in stmt.targets:
                self.own_names.update(_target_names(target))
            return
        if isinstance(stmt, ast.AnnAssign) and stmt.value is not None and isinstance(stmt.target, ast.Name):
            value = self.eval(stmt.value)
            self._check_size(stmt, value)
            self.names[stmt.target.id] = value
            self.own_names.add(stmt.target.id)
            return
        if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name) and type(stmt.op) in _BINARY_OPS:
            # bounded like the same BinOp: 'x **= 5000' or "s *= 10 ** 6" is refused, not computed
            value = self.binary(stmt, stmt.op, self.eval(stmt.target), self.eval(stmt.value))
            self._check_size(stmt, value)
            self.names[stmt.target.id] = value
            self.own_names.add(stmt.target.id)
            return
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            raise self.fail(stmt, "an import (new-style mmengine configs with read_base() are not supported)")
        raise self.fail(stmt, f"the statement '{type(stmt).__name__}'")

    def eval(self, node: ast.AST) -> Any:
        """The value of the expression ``node``.

        Raises:
            ConfigError: for a construct that is not data, a name not defined yet, or a value over the bounds.
        """
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.Dict):
            return self._dict(node)
        if isinstance(node, ast.List):
            return [self.eval(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.eval(e) for e in node.elts)
        if isinstance(node, ast.Set):
            return {self.eval(e) for e in node.elts}
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
            return self.binary(node, node.op, self.eval(node.left), self.eval(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
            return _UNARY_OPS[type(node.op)](self.eval(node.operand))
        if isinstance(node, ast.JoinedStr):
            return self._f_string(node)
        if isinstance(node, ast.Subscript):
            return self._subscript(node)
        if isinstance(node, ast.Slice):
            return slice(
                None if node.lower is None else self.eval(node.lower),
                None if node.upper is None else self.eval(node.upper),
                None if node.step is None else self.eval(node.step),
            )
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Attribute):
            raise self.fail(node, f"the attribute access '{ast.unparse(node)}'")
        raise self.fail(node, f"the construct '{type(node).__name__}'")

    def binary(self, node: ast.stmt | ast.expr, op: ast.operator, left: Any, right: Any) -> Any:
        """``left <op> right`` for ``a <op> b`` and ``a <op>= b``, refused where it would build too much."""
        too_big = _too_big(op, left, right)
        if too_big:
            raise ConfigError(
                f"{self.path}:{node.lineno}: this expression would build {too_big}, more than a config may hold"
            )
        try:
            return _BINARY_OPS[type(op)](left, right)
        except Exception as err:  # e.g. 'a' - 1
            raise ConfigError(f"{self.path}:{node.lineno}: cannot compute this expression: {err}") from None

    def fail(self, node: ast.AST, what: str) -> ConfigError:
        """The error for ``what``, a construct at ``node`` that a config file may not use."""
        line = getattr(node, "lineno", "?")
        return ConfigError(
            f"{self.path}:{line}: {what} is not allowed in a config file (configs are data: literals, "
            f"dict()/list()/tuple(), names defined earlier, f-strings and simple arithmetic)"
        )

    def _name(self, node: ast.Name) -> Any:
        if node.id in self.names:
            return self._read(node)
        if node.id in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[node.id]
        raise ConfigError(
            f"{self.path}:{node.lineno}: name '{node.id}' is used before it is defined." + suggest(node.id, self.names)
        )

    def _read(self, node: ast.Name) -> Any:
        """A copy of the value of ``node.id``, counted against the statement's read budget: without it,
        ``a = a + a`` on ten lines, or ``[a, a, a, a]``, would double or quadruple a value until memory runs out."""
        value = self.names[node.id]
        # counting costs at most what the budget allows in all, since the statement stops once it is spent
        size = value_size(value, _MAX_ITEMS)
        self.read_items += size
        self.file_read_items += size
        if self.file_read_items > _MAX_FILE_READS:
            raise ConfigError(
                f"{self.path}:{node.lineno}: the file copies more than {_MAX_FILE_READS} items and "
                f"characters out of names in all, more than a config may"
            )
        if self.read_items > _MAX_ITEMS:
            raise ConfigError(
                f"{self.path}:{node.lineno}: this statement copies more than {_MAX_ITEMS} items and "
                f"characters out of names defined earlier, more than a config may hold"
            )
        return copy.deepcopy(value)

    def _dict(self, node: ast.Dict) -> dict:
        out = {}
        for key, value in zip(node.keys, node.values):
            if key is None:  # {**other}
                out.update(self._mapping(value))
            else:
                out[self.eval(key)] = self.eval(value)
        return out

    def _f_string(self, node: ast.JoinedStr) -> str:
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                spec = self.eval(value.format_spec) if value.format_spec is not None else ""
                if any(int(width) > _MAX_FORMAT_WIDTH for width in re.findall(r"\d+", str(spec))):
                    raise ConfigError(
                        f"{self.path}:{node.lineno}: the format '{spec}' asks for a field wider "
                        f"than {_MAX_FORMAT_WIDTH} characters"
                    )
                converted = _CONVERSIONS.get(value.conversion, lambda v: v)(self.eval(value.value))  # !r !s !a
                parts.append(format(converted, spec))
            else:
                raise self.fail(value, "this f-string part")
        return "".join(parts)

    def _subscript(self, node: ast.Subscript) -> Any:
        container = self.eval(node.value)
        index = self.eval(node.slice)
        try:
            return container[index]
        except (KeyError, IndexError, TypeError) as err:
            raise ConfigError(f"{self.path}:{node.lineno}: bad subscript: {err!r}") from None

    def _call(self, node: ast.Call) -> Any:
        if not (isinstance(node.func, ast.Name) and node.func.id in _CONSTRUCTORS):
            raise self.fail(node, f"the call '{ast.unparse(node.func)}(...)'")
        kind = node.func.id
        args = [self.eval(a) for a in node.args]
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                kwargs.update(self._mapping(kw.value))
            else:
                kwargs[kw.arg] = self.eval(kw.value)
        if kind == "dict":
            return dict(*args, **kwargs)
        if kwargs:
            raise self.fail(node, f"keyword arguments to {kind}()")
        return _CONSTRUCTORS[kind](*args)

    def _mapping(self, node: ast.AST) -> dict:
        value = self.eval(node)
        if not isinstance(value, dict):
            raise self.fail(node, "'**' on something that is not a dict")
        return value

    def _assign(self, target: ast.AST, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.names[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            if any(isinstance(t, ast.Starred) for t in target.elts):
                raise self.fail(target, "a starred assignment target ('*rest')")
            if not isinstance(value, (list, tuple, str)):
                raise ConfigError(
                    f"{self.path}:{target.lineno}: cannot unpack {type(value).__name__} {value!r} into "
                    f"{len(target.elts)} names"
                )
            values = list(value)
            if len(values) != len(target.elts):
                raise ConfigError(f"{self.path}:{target.lineno}: {len(target.elts)} names take {len(values)} values")
            for t, v in zip(target.elts, values):
                self._assign(t, v)
        else:
            raise self.fail(target, f"assigning to '{ast.unparse(target)}'")

    def _check_size(self, stmt: ast.stmt, value: Any) -> None:
        if value_size(value, _MAX_ITEMS) > _MAX_ITEMS:
            raise ConfigError(
                f"{self.path}:{stmt.lineno}: this value holds more than {_MAX_ITEMS} items and "
                "characters, more than a config may hold"
            )


def _too_big(op: ast.operator, left: Any, right: Any) -> str:
    """What ``left <op> right`` would build if that exceeds the config bounds ('' when it does not)."""
    if isinstance(op, ast.Pow) and type(left) is int and type(right) is int and right > 0 and abs(left) > 1:
        if abs(left).bit_length() * right > _MAX_INT_BITS:
            return f"a number of about {abs(left).bit_length() * right} bits"
    if isinstance(op, ast.Mult):
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and type(count) is int and len(seq) * count > _MAX_ITEMS:
                return f"a sequence of {len(seq) * count} items"
    if isinstance(op, ast.Mod) and isinstance(left, str):
        fields = re.findall(r"%[-+ #0]*(\*|\d*)(?:\.(\*|\d*))?", left)
        widths = [int(w) for field in fields for w in field if w.isdigit()]
        if "*" in str(fields):  # widths taken from the arguments
            widths += [v for v in (right if isinstance(right, tuple) else (right,)) if type(v) is int]
        if any(width > _MAX_FORMAT_WIDTH for width in widths):
            return f"a %-format field wider than {_MAX_FORMAT_WIDTH} characters"
    if isinstance(op, (ast.Add, ast.Mult)) and type(left) is int and type(right) is int:
        if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
            return "a number too large"
    return ""


def _target_names(target: ast.AST) -> list[str]:
    """The names an assignment target binds (``a``, and ``a``, ``b`` of ``a, b = ...``)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _target_names(element)]
    return []
