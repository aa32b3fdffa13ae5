"""Reading text files that users write (configs, label maps, list files) and printing names taken from them.

Such files come from Notepad, Excel and scripts on every platform: UTF-8 with or without a byte-order mark, UTF-16
with one. :func:`read_text` decodes those, and refuses anything else (latin-1, cp1252, UTF-16 without a BOM) with
the file, the place and the encoding expected, rather than guessing. :func:`printable` makes a name read from such
a file safe to print to a terminal.

A leaf module: it imports nothing of lateral.
"""

from __future__ import annotations

import codecs
import os
import unicodedata
from pathlib import Path

from lateral.errors import LateralError

__all__ = ["TextFileError", "read_text", "printable"]

# longest first: the UTF-32 LE mark begins with the UTF-16 LE one
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_EXPECTED = "lateral reads text files as UTF-8 (or UTF-16 with a byte-order mark)"
# bidirectional overrides and isolates reorder what follows them on screen (the 'Trojan Source' trick)
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class TextFileError(LateralError, ValueError):
    """A user text file that cannot be decoded, with the file, the place and the encoding expected."""


def read_text(path: str | os.PathLike, what: str) -> str:
    """The text of ``path``, decoded as UTF-8, or by its byte-order mark (UTF-8, UTF-16 or UTF-32), mark removed.

    Line endings are left as they are (``str.splitlines`` and ``csv`` read all of them).

    Args:
        path: the file.
        what: what the file is to the user ('label map', 'config file', 'ann_file'), for the messages.

    Raises:
        FileNotFoundError: the file does not exist.
        TextFileError: the bytes are not text in those encodings, e.g. ``label map 'k400.txt': byte 0xe9 at offset
            13 (line 2) is not UTF-8; lateral reads text files as UTF-8 (or UTF-16 with a byte-order mark): save
            it as UTF-8``.
    """
    path = Path(path)
    data = path.read_bytes()
    encoding, start = "utf-8", 0
    for bom, name in _BOMS:
        if data.startswith(bom):
            encoding, start = name, len(bom)
            break
    if encoding == "utf-8" and b"\x00" in data:  # no one writes NUL in a text file: UTF-16 without its mark
        offset = data.index(b"\x00")
        line = data[:offset].count(b"\n") + 1
        raise TextFileError(
            f"{what} '{path}': a NUL byte at offset {offset} (line {line}); it looks like UTF-16 "
            f"without a byte-order mark, and {_EXPECTED}: save it as UTF-8"
        )
    try:
        return data[start:].decode(encoding)
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = data[start:offset].decode(encoding, errors="replace").count("\n") + 1
        shown = " ".join(f"0x{b:02x}" for b in err.object[err.start : err.end][:4])
        expected = (
            f"is not {encoding.upper()} although the file starts with a {encoding.upper()} byte-order mark"
            if start
            else f"is not UTF-8; {_EXPECTED}"
        )
        raise TextFileError(
            f"{what} '{path}': byte {shown} at offset {offset} (line {line}) {expected}: save it as UTF-8"
        ) from None


def printable(name: str) -> str:
    """``name`` with the characters that act on a terminal written as escapes (``'\\x1b[31m'`` -> ``'\\\\x1b[31m'``).

    Control characters (ESC, CR, BEL, ...), line and paragraph separators and bidirectional overrides could recolour
    the terminal, rewrite an earlier part of a line or reorder it. Use this where a name read from a user file is
    printed to a terminal or log; keep the name itself unchanged where it is stored (JSON and CSV outputs, which
    escape or quote such characters themselves), so outputs still match the label map.
    """
    name = str(name)
    if name.isprintable():
        return name
    parts = []
    for char in name:
        if char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            code = ord(char)
            parts.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            parts.append(char)
    return "".join(parts)
