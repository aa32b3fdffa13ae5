"""A restricted unpickler for Caffe2 checkpoints (``.pkl``): numpy arrays and plain containers, nothing else.

``pickle.load`` will call any importable function a file names (a ``__reduce__`` payload), so a downloaded
``.pkl`` could run arbitrary code. Caffe2 / Detectron / PySlowFast ``.pkl`` checkpoints only ever need numpy's
array and dtype reconstructors and ``OrderedDict``; :class:`RestrictedUnpickler` resolves exactly those and
refuses every other global *before* anything is called.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lateral.checkpoint import CheckpointError

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "load_numpy_pickle"]


class UnsafePickleError(CheckpointError, pickle.UnpicklingError):
    """A pickle that asks for a global outside the allow-list; nothing from it has been executed."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (always latin-1); other codecs are refused."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"pickle asks to encode with {encoding!r}; only latin-1 byte strings are allowed")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any] | type]:
    """(module, name) -> object. The reconstructors are taken from numpy itself, so numpy 1.x and 2.x both work."""
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer (protocol 5)
    scalar = np.float32(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    # numpy 2 pickles name their dtype classes (numpy.dtypes.Float32DType); they are plain dtype types
    for dtype_name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"):
        dtype_class = type(np.dtype(dtype_name))
        allowed[("numpy.dtypes", dtype_class.__name__)] = dtype_class
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` resolves only numpy array / dtype reconstruction and ``OrderedDict``.

    Args:
        file: binary file object.
        source: what is being read, for error messages.
    """

    _ALLOWED = _allowed_globals()

    def __init__(self, file: io.BufferedIOBase, source: str = "pickle"):
        # Caffe2 pickles were written by Python 2: their str payloads are latin-1 bytes
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source} was refused: it asks to call '{module}.{name}', but a Caffe2 checkpoint holds only "
                "numpy arrays and plain containers. Nothing from the file was executed; do not open it with "
                "pickle.load."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self.source} was refused: it uses persistent ids ({pid!r}), which Caffe2 never writes"
        )


def load_numpy_pickle(path: str | os.PathLike) -> Any:
    """Read a pickle of numpy arrays and plain containers (a Caffe2 ``.pkl``) without executing anything.

    Raises:
        UnsafePickleError: the file names any other global (e.g. a ``__reduce__`` payload calling ``os.system``).
        CheckpointError: the file is missing, truncated or not a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    with path.open("rb") as handle:
        try:
            return RestrictedUnpickler(handle, str(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise CheckpointError(f"{path} is not a readable Caffe2 pickle (truncated or corrupt?): {err}") from None
