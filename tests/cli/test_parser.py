"""The ``lateral`` command's layer: quick to start, the only place argparse lives, its choices the library's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lateral

PACKAGE = Path(lateral.__file__).parent


def test_help_imports_no_torch_and_lists_every_command():
    code = (
        "import sys; from lateral.cli import build_parser; text = build_parser().format_help(); "
        "print('torch' in sys.modules); print(text)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    torch_loaded, help_text = done.stdout.split("\n", 1)
    assert torch_loaded == "False"
    for command in ("summary", "train", "test", "predict", "demo", "data", "detect", "convert", "export", "bench"):
        assert f"    {command}" in help_text


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_argparse_and_the_cli_are_imported_only_by_the_cli():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if PACKAGE / "cli" in path.parents or path.name == "__main__.py":
            continue
        used = {name for name in _imports(path) if name == "argparse" or name.startswith("lateral.cli")}
        if used:
            offenders.append(f"{path.relative_to(PACKAGE)}: {sorted(used)}")
    assert offenders == []


def test_cli_modules_import_only_the_standard_library_and_light_lateral_modules_at_the_top():
    light = {"lateral.cli", "lateral.cli.args", "lateral.config", "lateral.errors"}
    for path in (PACKAGE / "cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: commands import the engine when they run
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lateral"):
                assert node.module in light, f"{path.name} imports {node.module} at the top"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] in ("torch", "numpy", "av", "torchvision") for m in modules), path


def test_the_choices_written_out_in_the_cli_are_the_librarys():
    from lateral.cli import convert as convert_cli
    from lateral.cli import export as export_cli
    from lateral.convert import SAMPLING_PRESETS, STAGE_BLOCKS
    from lateral.inference.exporters import EXPORT_FORMATS
    from lateral.inference.timing import VARIANTS

    assert convert_cli.DEPTHS == sorted(STAGE_BLOCKS)
    assert convert_cli.PRESETS == sorted(SAMPLING_PRESETS)
    assert tuple(export_cli.EXPORT_FORMATS) == tuple(EXPORT_FORMATS)
    assert tuple(export_cli.VARIANTS) == tuple(VARIANTS)


def test_positive_int_names_the_bad_value():
    import argparse

    import pytest

    from lateral.cli.args import positive_int

    assert positive_int("3") == 3
    for bad, shown in (("0", "got 0"), ("x", "got 'x'")):
        with pytest.raises(argparse.ArgumentTypeError, match=shown):
            positive_int(bad)


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    import pytest

    from lateral import cli
    from lateral.errors import InputError

    def fails_with(error):
        def run(args):
            raise error

        return run

    def parse_with(error):
        parser = cli.build_parser()
        original = parser.parse_args
        monkeypatch.setattr(cli, "build_parser", lambda: parser)
        monkeypatch.setattr(parser, "parse_args", lambda argv: _with_func(original(argv), fails_with(error)))

    def _with_func(args, func):
        args.func = func
        return args

    parse_with(InputError("label map 'x.txt', line 3: expected 'id,name'"))
    assert cli.main(["summary", "c.py"]) == 1
    assert capsys.readouterr().err.strip() == "lateral summary: error: label map 'x.txt', line 3: expected 'id,name'"
    parse_with(ValueError("an internal invariant broke"))  # not a LateralError: a bug, so the traceback stays
    with pytest.raises(ValueError, match="internal invariant"):
        cli.main(["summary", "c.py"])
