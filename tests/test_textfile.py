"""User text files in the encodings editors write, refused with a place when undecodable; names safe to print."""

import pytest

from lateral.textfile import TextFileError, printable, read_text

TEXT = "id,name\n0,café\n1,move_right\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf8_and_text_with_a_byte_order_mark_read_without_the_mark(tmp_path, encoding):
    data = TEXT.encode(encoding)
    if encoding in ("utf-16-le", "utf-16-be"):  # these codecs write no mark: add it, as Notepad does
        data = "\ufeff".encode(encoding) + data
    (tmp_path / "f.txt").write_bytes(data)
    assert read_text(tmp_path / "f.txt", "label map") == TEXT


@pytest.mark.parametrize(
    "encoding, message",
    [
        (
            "latin-1",
            r"label map '.*f.txt': byte 0xe9 at offset 13 \(line 2\) is not UTF-8; lateral reads text files "
            r"as UTF-8 \(or UTF-16 with a byte-order mark\): save it as UTF-8",
        ),
        ("cp1252", r"byte 0xe9 at offset 13 \(line 2\) is not UTF-8"),
        ("utf-16-le", r"a NUL byte at offset 1 \(line 1\); it looks like UTF-16 without a byte-order mark"),
    ],
)
def test_other_encodings_are_refused_with_the_file_the_place_and_the_encoding_expected(tmp_path, encoding, message):
    (tmp_path / "f.txt").write_bytes(TEXT.encode(encoding))
    with pytest.raises(TextFileError, match=message):
        read_text(tmp_path / "f.txt", "label map")


def test_a_file_that_breaks_its_byte_order_mark_is_refused(tmp_path):
    (tmp_path / "f.txt").write_bytes(b"\xff\xfe" + "ab\n".encode("utf-16-le") + b"c")  # odd length
    with pytest.raises(TextFileError, match=r"offset 8 \(line 2\) is not UTF-16-LE although the file starts"):
        read_text(tmp_path / "f.txt", "ann_file")


def test_printable_escapes_what_acts_on_a_terminal_and_keeps_the_rest():
    assert printable("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert printable("a\rb\nc\x07") == "a\\x0db\\x0ac\\x07"
    assert printable("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert printable("café Tai Chi 太极 🏄") == "café Tai Chi 太极 🏄"
    assert printable(3) == "3"
