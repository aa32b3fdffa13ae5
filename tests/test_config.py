"""Config files are parsed as data: inheritance, merging, overrides, and refusal of anything executable."""

import pytest

from lateral.config import ConfigError, apply_cfg_options, load_config


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_base_inheritance_merges_dicts_and_reads_base_names(tmp_path):
    write(tmp_path, "base.py", "dataset_type = 'VideoDataset'\nmodel = dict(type='R', backbone=dict(depth=50, lateral=True), head=dict(n=400))\n")
    child = write(tmp_path, "child.py", "_base_ = ['base.py']\nmodel = dict(backbone=dict(depth=101))\ndata = dict(type=dataset_type)\n")
    cfg = load_config(child)
    assert cfg["model"] == {"type": "R", "backbone": {"depth": 101, "lateral": True}, "head": {"n": 400}}
    assert cfg["data"] == {"type": "VideoDataset"}
    assert "_base_" not in cfg


def test_delete_replaces_instead_of_merging(tmp_path):
    write(tmp_path, "base.py", "optim = dict(type='SGD', lr=0.1, momentum=0.9)\n")
    child = write(tmp_path, "child.py", "_base_ = 'base.py'\noptim = dict(_delete_=True, type='AdamW', lr=1e-3)\n")
    assert load_config(child)["optim"] == {"type": "AdamW", "lr": 1e-3}


def test_arithmetic_fstrings_and_names(tmp_path):
    path = write(tmp_path, "c.py", "root = 'data/k400'\nclip_len = 8 * 4\nann = f'{root}/train_{clip_len}.txt'\nsize = (clip_len // 2, -1)\nitems = [1, 2] + [3]\n")
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


def test_missing_file_and_base_cycle(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.py")
    write(tmp_path, "a.py", "_base_ = 'b.py'\n")
    write(tmp_path, "b.py", "_base_ = 'a.py'\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.py")


def test_cfg_options_override_nested_keys_and_list_items():
    cfg = {"model": {"cls_head": {"num_classes": 400}}, "pipeline": [{"type": "A"}, {"type": "B", "n": 1}],
           "lr": 0.1, "name": "run0", "sizes": (3,)}
    out = apply_cfg_options(cfg, ["model.cls_head.num_classes=10", "pipeline.1.n=8", "lr=0.01", "name=run1", "sizes=1,2"])
    assert out["model"]["cls_head"]["num_classes"] == 10 and out["pipeline"][1]["n"] == 8
    assert out["lr"] == 0.01 and out["name"] == "run1" and out["sizes"] == (1, 2)
    assert cfg["model"]["cls_head"]["num_classes"] == 400  # the input is not modified
    with pytest.raises(ConfigError, match="out of range"):
        apply_cfg_options(cfg, ["pipeline.5.n=1"])


def test_shipped_configs_load_and_build():
    import lateral

    for name in ["slowfast_r50_4x16x1", "slowfast_r50_8x8x1", "slowfast_r101_8x8x1", "slowonly_r50_8x8x1"]:
        cfg = load_config(f"configs/recognition/slowfast/{name}_kinetics400.py")
        assert cfg["test_pipeline"][1]["num_clips"] == 10
        assert cfg["model"]["type"] == "Recognizer3D"
    model = lateral.build_model("configs/recognition/slowfast/slowfast_r101_8x8x1_kinetics400.py")
    assert len(model.backbone.slow_path.layer3) == 23 and model.backbone.resample_rate == 4


def test_shipped_detection_configs_load_and_build():
    import lateral

    r18 = load_config("configs/detection/faster_rcnn_r18_fpn_shapes.py")
    assert r18["model"]["backbone"]["depth"] == 18 and r18["schedule"]["max_iters"] == 800
    assert r18["data"]["train"]["synthetic"]["seed"] == 0  # inherited from the R50 recipe
    model = lateral.build_model(r18["model"])
    assert model.backbone.out_channels == 128


def test_cfg_options_refuse_a_near_miss_of_a_top_level_name():
    cfg = {"train_cfg": {"max_epochs": 1}, "model": {}}
    with pytest.raises(ConfigError, match="no top-level 'trian_cfg'.*Did you mean 'train_cfg'"):
        apply_cfg_options(cfg, ["trian_cfg.max_epochs=3"])
    with pytest.raises(ConfigError, match="Did you mean 'randomness'"):  # known name, absent from this config
        apply_cfg_options(cfg, ["randomnes.seed=3"])
    out = apply_cfg_options(cfg, ["randomness.seed=3", "channels_last=True"])
    assert out["randomness"] == {"seed": 3} and out["channels_last"] is True


def test_cfg_options_refuse_new_top_level_names_and_point_to_the_nested_setting():
    # the file is evaluated before the overrides, so a new top-level name could change nothing: it is refused
    cfg = {"train_cfg": {"max_epochs": 1}, "optim_wrapper": {"optimizer": {"type": "SGD", "lr": 0.1}}}
    with pytest.raises(ConfigError, match="no top-level 'max_epochs'.*Did you mean train_cfg.max_epochs"):
        apply_cfg_options(cfg, ["max_epochs=5"])
    with pytest.raises(ConfigError, match="Did you mean optim_wrapper.optimizer.lr"):
        apply_cfg_options(cfg, ["lr=0.01"])
    with pytest.raises(ConfigError, match="lateral reads no such setting"):
        apply_cfg_options(cfg, ["my_setting=4"])
    for empty in ("=3", "train_cfg..max_epochs=2", "train_cfg.=2"):
        with pytest.raises(ConfigError, match="empty part"):
            apply_cfg_options(cfg, [empty])


def test_check_keys_names_the_unknown_key_and_the_close_match():
    from lateral.config import check_keys

    assert check_keys(None, ("a",), "x") == {}
    assert check_keys({"max_epochs": 2}, ("max_epochs", "val_interval"), "train_cfg") == {"max_epochs": 2}
    with pytest.raises(ConfigError, match="train_cfg: unknown key 'max_epoch'. Did you mean 'max_epochs'"):
        check_keys({"max_epoch": 2}, ("max_epochs", "val_interval"), "train_cfg")
    with pytest.raises(ConfigError, match="train_cfg must be a dict"):
        check_keys(3, ("max_epochs",), "train_cfg")


def test_missing_base_file_names_the_config_that_wants_it(tmp_path):
    write(tmp_path, "child.py", "_base_ = ['gone.py']\nx = 1\n")
    with pytest.raises(ConfigError, match=r"child.py: _base_ file not found: .*gone.py"):
        load_config(tmp_path / "child.py")


def test_top_level_near_miss_of_a_missing_section_is_refused():
    from lateral.config import check_top_level

    check_top_level({"train_cfg": {}, "data_root": "x", "img_norm_cfg": {}, "clip_len": 8})  # free names are fine
    with pytest.raises(ConfigError, match="'train_cfgg' is not read by lateral. Did you mean 'train_cfg'"):
        check_top_level({"train_cfgg": {"max_epochs": 2}})
    with pytest.raises(ConfigError, match="Did you mean 'schedule'"):
        check_top_level({"schedul": {"max_iters": 4}})


def test_counts_must_be_whole_positive_numbers():
    from lateral.config import positive_int_setting

    assert positive_int_setting(3, "train_cfg.max_epochs") == 3
    for bad in (0, -3, 1.7, "abc", True):
        with pytest.raises(ConfigError, match="train_cfg.max_epochs must be a whole number >= 1"):
            positive_int_setting(bad, "train_cfg.max_epochs")


def test_cfg_options_cannot_set_a_key_inside_a_number():
    cfg = {"model": {"backbone": {"depth": 18}}}
    with pytest.raises(ConfigError, match="'model.backbone.depth' is 18, not a dict or list to set 'x' in"):
        apply_cfg_options(cfg, ["model.backbone.depth.x=1"])


def test_cfg_options_on_a_named_pipeline_reach_the_dataloaders_that_use_it():
    pipeline = [{"type": "SampleFrames", "clip_len": 8}, {"type": "Resize"}]
    cfg = {"train_pipeline": pipeline,
           "train_dataloader": {"dataset": {"type": "VideoDataset", "pipeline": list(pipeline)}},
           "val_dataloader": {"dataset": {"type": "VideoDataset", "pipeline": [{"type": "Other"}]}}}
    out = apply_cfg_options(cfg, ["train_pipeline.0.clip_len=16"])
    assert out["train_pipeline"][0]["clip_len"] == 16
    assert out["train_dataloader"]["dataset"]["pipeline"][0]["clip_len"] == 16
    assert out["val_dataloader"]["dataset"]["pipeline"] == [{"type": "Other"}]  # a pipeline of its own stays
    assert cfg["train_dataloader"]["dataset"]["pipeline"][0]["clip_len"] == 8


def test_tuple_unpacking_assignments_are_kept(tmp_path):
    (tmp_path / "a.py").write_text("clip_len, frame_interval = 32, 2\n(h, w), name = (224, 256), 'x'\n")
    assert load_config(tmp_path / "a.py") == {"clip_len": 32, "frame_interval": 2, "h": 224, "w": 256, "name": "x"}


@pytest.mark.parametrize("source, message", [
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
])
def test_expressions_that_would_exhaust_the_machine_are_refused_at_once(tmp_path, source, message):
    import time

    (tmp_path / "a.py").write_text(source + "\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "a.py")
    assert time.perf_counter() - started < 5  # refused before computing, not after


@pytest.mark.parametrize("source, message", [
    ("x = -'a'", "a.py:1: cannot compute this value: TypeError: bad operand type for unary -"),
    ("x = list(5)", "a.py:1: cannot compute this value: TypeError"),
    ("x = {[1]: 2}", "a.py:1: cannot compute this value: TypeError: .*unhashable"),
    ("x = {[1]}", "a.py:1: cannot compute this value: TypeError: .*unhashable"),
    ("x = dict(**{1: 2})", "a.py:1: cannot compute this value: TypeError: keywords must be strings"),
    ("y = 0\nx = [1][0:2:0]", "a.py:2: cannot compute this value: ValueError: slice step cannot be zero"),
    ("x = f'{1:zz}'", "a.py:1: cannot compute this value: ValueError: Unknown format code"),
])
def test_values_python_cannot_compute_are_named_by_file_and_line(tmp_path, source, message):
    (tmp_path / "a.py").write_text(source + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "a.py")


def test_f_string_conversions_are_applied(tmp_path):
    (tmp_path / "a.py").write_text("x = f'{1!r:>5}'\ny = f'{x!r}'\nz = f'{\"é\"!a}{x!s}'\n")
    assert load_config(tmp_path / "a.py") == {"x": "    1", "y": "'    1'", "z": "'\\xe9'    1"}


def test_ordinary_arithmetic_stays_allowed(tmp_path):
    (tmp_path / "a.py").write_text("x = 2 ** 64\ny = 'ab' * 3\nz = [1, 2] * 4\nf = f'{0.5:.3f}'\np = '%05d' % 7\n")
    assert load_config(tmp_path / "a.py") == {"x": 2 ** 64, "y": "ababab", "z": [1, 2] * 4, "f": "0.500", "p": "00007"}


def test_bad_unpacking_and_overrides_of_absent_pipelines_are_named(tmp_path):
    for source, message in [("a, b = 5\n", "a.py:1: cannot unpack int 5 into 2 names"),
                            ("a, b = 1, 2, 3\n", "a.py:1: 2 names take 3 values"),
                            ("a, *rest = [1, 2, 3]\n", "a starred assignment target")]:
        (tmp_path / "a.py").write_text(source)
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_path / "a.py")
    cfg = {"train_dataloader": {"dataset": {"pipeline": [{"type": "A"}, {"type": "SampleFrames", "clip_len": 8}]}}}
    with pytest.raises(ConfigError, match="no top-level 'train_pipeline'.*set train_dataloader.dataset.pipeline.1."
                                          "clip_len instead"):
        apply_cfg_options(cfg, ["train_pipeline.1.clip_len=4"])
    assert apply_cfg_options(cfg, ["train_dataloader.dataset.pipeline.1.clip_len=4"])[
        "train_dataloader"]["dataset"]["pipeline"][1]["clip_len"] == 4


def test_cfg_option_words_true_false_none_in_any_case():
    from lateral.config import parse_cfg_value

    assert [parse_cfg_value(t) for t in ("false", "False", "TRUE", "none", "None")] == [False, False, True, None, None]
    assert parse_cfg_value("falsey") == "falsey" and parse_cfg_value("0") == 0
    cfg = apply_cfg_options({"channels_last": True}, ["channels_last=false"])
    assert cfg["channels_last"] is False


def test_overriding_a_file_variable_that_was_copied_into_settings_points_to_them(tmp_path):
    (tmp_path / "a.py").write_text(
        "clip_len = 8\nother = 3\ntrain_pipeline = [dict(type='SampleFrames', clip_len=clip_len)]\n"
        "train_dataloader = dict(dataset=dict(pipeline=train_pipeline))\n"
    )
    cfg = load_config(tmp_path / "a.py")
    with pytest.raises(ConfigError, match="'clip_len' is a variable of the config file.*set train_pipeline.0.clip_len, "
                                          "train_dataloader.dataset.pipeline.0.clip_len instead"):
        apply_cfg_options(cfg, ["clip_len=4"])
    assert apply_cfg_options(cfg, ["train_pipeline.0.clip_len=4"])["train_dataloader"]["dataset"]["pipeline"][0][
        "clip_len"] == 4
    assert apply_cfg_options(cfg, ["other=5"])["other"] == 5  # copied nowhere under its own name: taken as given


def test_overriding_a_variable_the_file_built_settings_from_is_refused(tmp_path):
    (tmp_path / "a.py").write_text("data_root = 'data/x'\nann_file_train = f'{data_root}/train.txt'\n"
                                   "train_dataloader = dict(dataset=dict(ann_file=ann_file_train))\n")
    cfg = load_config(tmp_path / "a.py")
    for option in ("data_root=/elsewhere", "ann_file_train=/x.txt"):
        with pytest.raises(ConfigError, match="is a variable of the config file.*ann_file and data_prefix"):
            apply_cfg_options(cfg, [option])


def test_many_statements_that_each_copy_a_big_value_are_refused_quickly(tmp_path):
    import time

    (tmp_path / "a.py").write_text("a = [0] * 900000\n" + "".join(f"b{i} = a + [{i}]\n" for i in range(400)))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="the file copies more than 5000000 items"):
        load_config(tmp_path / "a.py")
    assert time.perf_counter() - started < 20


def test_a_base_listed_many_times_is_read_once(tmp_path, monkeypatch):
    import lateral.config.loader as config

    write(tmp_path, "d.py", '"""no settings"""\n')
    for name, base in (("a.py", "b.py"), ("b.py", "c.py"), ("c.py", "d.py")):
        write(tmp_path, name, f"_base_ = ['./{base}'] * 10\n")
    write(tmp_path, "top.py", "_base_ = ['a.py']\nx = 1\n")
    parsed = []
    real_parse = config._parse_file
    monkeypatch.setattr(config, "_parse_file", lambda path, *rest: parsed.append(path) or real_parse(path, *rest))
    assert load_config(tmp_path / "top.py") == {"x": 1}
    assert sorted(p.name for p in parsed) == ["a.py", "b.py", "c.py", "d.py", "top.py"]  # not 1 + 1 + 10 + 100 + 1000


def test_base_fan_out_is_bounded_and_refused_at_once(tmp_path):
    import time

    # five small files, each listing the next 1000 times: 10^12 paths through them
    for i in range(4):
        write(tmp_path, f"c{i}.py", f"# fan-out\n_base_ = ['./c{i + 1}.py'] * 1000\n")
    write(tmp_path, "c4.py", '"""the end"""\n')
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"c1.py: with its 1000 _base_ entries, reading .*c0.py follows more than "
                                          r"1000 _base_ entries in all \(repeats included\)"):
        load_config(tmp_path / "c0.py")
    assert time.perf_counter() - started < 2


def test_repeated_and_shared_bases_with_settings_are_refused_as_mmengine_does(tmp_path):
    write(tmp_path, "base.py", "x = 1\n")
    write(tmp_path, "twice.py", "_base_ = ['base.py', './base.py']\n")
    with pytest.raises(ConfigError, match=r"twice.py: the _base_ files define \['x'\] more than once"):
        load_config(tmp_path / "twice.py")
    write(tmp_path, "left.py", "_base_ = 'base.py'\nleft = 1\n")
    write(tmp_path, "right.py", "_base_ = 'base.py'\nright = 1\n")
    write(tmp_path, "diamond.py", "_base_ = ['left.py', 'right.py']\n")
    with pytest.raises(ConfigError, match=r"diamond.py: the _base_ files define \['x'\] more than once"):
        load_config(tmp_path / "diamond.py")
    write(tmp_path, "loop.py", "_base_ = ['base.py', 'back.py']\n")  # a cycle behind a base already read
    write(tmp_path, "back.py", "_base_ = 'loop.py'\n")
    with pytest.raises(ConfigError, match=r"_base_ cycle: .*loop.py -> .*back.py -> .*loop.py"):
        load_config(tmp_path / "loop.py")


def test_a_long_base_chain_is_refused_with_its_depth_not_as_a_nested_expression(tmp_path):
    for i in range(199):
        write(tmp_path, f"c{i}.py", f"_base_ = 'c{i + 1}.py'\n" if i < 198 else "x = 1\n")
    with pytest.raises(ConfigError, match=r"c0.py: its _base_ files nest more than 32 deep \(c0.py -> c1.py -> c2.py "
                                          r"-> \.\.\. -> c31.py -> c32.py\); a config may inherit through a chain of "
                                          r"at most 32 files"):
        load_config(tmp_path / "c0.py")
    assert load_config(tmp_path / "c167.py") == {"x": 1}  # 32 files: the limit itself


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_configs_with_a_byte_order_mark_are_read(tmp_path, encoding):
    (tmp_path / "base.py").write_bytes("name = 'café'\n".encode(encoding))
    (tmp_path / "c.py").write_bytes("_base_ = ['base.py']\nmodel = dict(name=name)\n".encode(encoding))
    assert load_config(tmp_path / "c.py") == {"name": "café", "model": {"name": "café"}}


def test_a_config_in_another_encoding_is_refused_naming_the_file_and_the_place(tmp_path):
    (tmp_path / "c.py").write_bytes("x = 1\nname = 'café'\n".encode("cp1252"))
    with pytest.raises(ConfigError, match=r"config file '.*c.py': byte 0xe9 at offset 17 \(line 2\) is not UTF-8; "
                                          r"lateral reads text files as UTF-8 \(or UTF-16 with a byte-order mark\)"):
        load_config(tmp_path / "c.py")
