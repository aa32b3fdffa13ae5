"""Damage a checkpoint file the way a failing disk or a broken copy does: bytes overwritten in place, size kept."""

import struct
import zipfile
from pathlib import Path


def zero_tensor_bytes(path: Path, length: int = 4096) -> str:
    """Overwrite ``length`` bytes in the middle of the largest tensor member of the zip archive torch.save wrote
    with zeros, and return that member's name. The archive's structure (headers, table of contents) is untouched,
    so torch.load reads the file without complaint."""
    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert member.file_size > length, f"{path}: the largest tensor has {member.file_size} bytes, fewer than {length}"
    with open(path, "r+b") as handle:
        handle.seek(member.header_offset)
        name_len, extra_len = struct.unpack("<26xHH", handle.read(30))
        start = member.header_offset + 30 + name_len + extra_len + (member.file_size - length) // 2
        handle.seek(start)
        handle.write(bytes(length))
    return member.filename
