"""The sandboxed evaluator: a config file's statements get their values as data; code and values too large to
build are refused with the file and line."""

import pytest

from lateral.config import ConfigError, load_config


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_arithmetic_fstrings_and_names(tmp_path):
    path = write(
        tmp_path,
        "c.py",
        "root = 'data/k400'\nclip_len = 8 * 4\nann = f'{root}/train_{clip_len}.txt'\n"
        "size = (clip_len // 2, -1)\nitems = [1, 2] + [3]\n",
    )
    cfg = load_config(path)
    assert cfg["ann"] == "data/k400/train_32.txt" and cfg["size"] == (16, -1) and cfg["items"] == [1, 2, 3]


@pytest.mark.parametrize(
    "source,what",
    [
        ("import os\n", "import"),
        ("x = __import__('os').system('touch pwned')\n", "call '__import__"),
        ("x = open('/etc/passwd').read()\n", "attribute access|call"),
        ("def f():\n    pass\n", "FunctionDef"),
        ("x = [i for i in range(3)]\n", "ListComp"),
        ("x = lambda: 1\n", "Lambda"),
    ],
)
def test_code_is_refused_with_file_and_line(tmp_path, source, what):
    path = write(tmp_path, "evil.py", "a = 1\n" + source)
    with pytest.raises(ConfigError, match=what) as info:
        load_config(path)
    assert "evil.py:2" in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_undefined_name_suggests_the_close_one(tmp_path):
    path = write(tmp_path, "c.py", "clip_len = 32\nx = dict(n=clip_lem)\n")
    with pytest.raises(ConfigError, match="Did you mean 'clip_len'"):
        load_config(path)


def test_tuple_unpacking_assignments_are_kept(tmp_path):
    (tmp_path / "a.py").write_text("clip_len, frame_interval = 32, 2\n(h, w), name = (224, 256), 'x'\n")
    assert load_config(tmp_path / "a.py") == {"clip_len": 32, "frame_interval": 2, "h": 224, "w": 256, "name": "x"}


@pytest.mark.parametrize(
    "source, message",
    [
        ("x = 10 ** 10 ** 9", "a number of about 4000000000 bits"),
        ("x = 'a' * 10 ** 10", "a sequence of 10000000000 items"),
        ("x = [0] * 10 ** 9", "a sequence of 1000000000 items"),
        ("x = f'{1:999999999}'", "asks for a field wider than 10000"),
        ("w = 999999999\nx = f'{1:{w}}'", "asks for a field wider than 10000"),
        ("x = '%999999999d' % 1", "%-format field wider"),
        ("x = '%*d' % (999999999, 1)", "%-format field wider"),
        ("x = '%.999999999f' % 1.0", "%-format field wider"),
        ("x = " + "+".join(["1"] * 100_000), "nested too deeply"),
        # growth over several statements, which no single expression shows
        ("x = 2 ** 5000\nx **= 5000", "a.py:2: this expression would build a number of about 250[0-9]+ bits"),
        ("x = 'a' * 1000000\nx *= 1000000", "a sequence of 1000000000000 items"),
        ("a = 'a' * 1000000\n" + "a = a + a\n" * 12, "a.py:2: this statement copies more than 1000000"),
        ("a = [0] * 1000000\n" + "a = a + a\n" * 10, "a.py:2: this statement copies more than 1000000"),
        ("a = 'a' * 300000\n" + "a = f'{a}{a}{a}{a}'\n" * 6, "a.py:2: this statement copies more than 1000000"),
        ("a = [0] * 1000\n" + "a = [a] * 1000\n" * 3, "a.py:2: this value holds more than 1000000"),
        ("a = [0] * 1000\n" + "a = [a, a, a, a]\n" * 30, "a.py:6: this statement copies more than 1000000"),
    ],
)
def test_expressions_that_would_exhaust_the_machine_are_refused_at_once(tmp_path, source, message):
    import time

    (tmp_path / "a.py").write_text(source + "\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "a.py")
    assert time.perf_counter() - started < 5  # refused before computing, not after


@pytest.mark.parametrize(
    "source, message",
    [
        ("x = -'a'", "a.py:1: cannot compute this value: TypeError: bad operand type for unary -"),
        ("x = list(5)", "a.py:1: cannot compute this value: TypeError"),
        ("x = {[1]: 2}", "a.py:1: cannot compute this value: TypeError: .*unhashable"),
        ("x = {[1]}", "a.py:1: cannot compute this value: TypeError: .*unhashable"),
        ("x = dict(**{1: 2})", "a.py:1: cannot compute this value: TypeError: keywords must be strings"),
        ("y = 0\nx = [1][0:2:0]", "a.py:2: cannot compute this value: ValueError: slice step cannot be zero"),
        ("x = f'{1:zz}'", "a.py:1: cannot compute this value: ValueError: Unknown format code"),
    ],
)
def test_values_python_cannot_compute_are_named_by_file_and_line(tmp_path, source, message):
    (tmp_path / "a.py").write_text(source + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "a.py")


def test_f_string_conversions_are_applied(tmp_path):
    (tmp_path / "a.py").write_text("x = f'{1!r:>5}'\ny = f'{x!r}'\nz = f'{\"é\"!a}{x!s}'\n")
    assert load_config(tmp_path / "a.py") == {"x": "    1", "y": "'    1'", "z": "'\\xe9'    1"}


def test_ordinary_arithmetic_stays_allowed(tmp_path):
    (tmp_path / "a.py").write_text("x = 2 ** 64\ny = 'ab' * 3\nz = [1, 2] * 4\nf = f'{0.5:.3f}'\np = '%05d' % 7\n")
    assert load_config(tmp_path / "a.py") == {"x": 2**64, "y": "ababab", "z": [1, 2] * 4, "f": "0.500", "p": "00007"}


def test_bad_unpacking_is_named(tmp_path):
    for source, message in [
        ("a, b = 5\n", "a.py:1: cannot unpack int 5 into 2 names"),
        ("a, b = 1, 2, 3\n", "a.py:1: 2 names take 3 values"),
        ("a, *rest = [1, 2, 3]\n", "a starred assignment target"),
    ]:
        (tmp_path / "a.py").write_text(source)
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_path / "a.py")


def test_many_statements_that_each_copy_a_big_value_are_refused_quickly(tmp_path):
    import time

    (tmp_path / "a.py").write_text("a = [0] * 900000\n" + "".join(f"b{i} = a + [{i}]\n" for i in range(400)))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="the file copies more than 5000000 items"):
        load_config(tmp_path / "a.py")
    assert time.perf_counter() - started < 20
