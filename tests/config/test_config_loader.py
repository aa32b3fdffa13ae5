"""Loading configs: _base_ inheritance and merging, _delete_, the bounds on _base_ files, encodings, and
--cfg-options overrides."""

import pytest

from lateral.config import ConfigError, apply_cfg_options, load_config, parse_cfg_value


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_base_inheritance_merges_dicts_and_reads_base_names(tmp_path):
    write(
        tmp_path,
        "base.py",
        "dataset_type = 'VideoDataset'\n"
        "model = dict(type='R', backbone=dict(depth=50, lateral=True), head=dict(n=400))\n",
    )
    child = write(
        tmp_path,
        "child.py",
        "_base_ = ['base.py']\nmodel = dict(backbone=dict(depth=101))\ndata = dict(type=dataset_type)\n",
    )
    cfg = load_config(child)
    assert cfg["model"] == {"type": "R", "backbone": {"depth": 101, "lateral": True}, "head": {"n": 400}}
    assert cfg["data"] == {"type": "VideoDataset"}
    assert "_base_" not in cfg


def test_delete_replaces_instead_of_merging(tmp_path):
    write(tmp_path, "base.py", "optim = dict(type='SGD', lr=0.1, momentum=0.9)\n")
    child = write(tmp_path, "child.py", "_base_ = 'base.py'\noptim = dict(_delete_=True, type='AdamW', lr=1e-3)\n")
    assert load_config(child)["optim"] == {"type": "AdamW", "lr": 1e-3}


def test_missing_file_and_base_cycle(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.py")
    write(tmp_path, "a.py", "_base_ = 'b.py'\n")
    write(tmp_path, "b.py", "_base_ = 'a.py'\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.py")


def test_cfg_options_override_nested_keys_and_list_items():
    cfg = {
        "model": {"cls_head": {"num_classes": 400}},
        "pipeline": [{"type": "A"}, {"type": "B", "n": 1}],
        "lr": 0.1,
        "name": "run0",
        "sizes": (3,),
    }
    out = apply_cfg_options(
        cfg, ["model.cls_head.num_classes=10", "pipeline.1.n=8", "lr=0.01", "name=run1", "sizes=1,2"]
    )
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
    assert r18["model"]["backbone"]["depth"] == 18 and r18["train_cfg"]["max_iters"] == 800
    assert r18["train_dataloader"]["dataset"]["synthetic"]["seed"] == 0  # inherited from the R50 recipe
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


def test_missing_base_file_names_the_config_that_wants_it(tmp_path):
    write(tmp_path, "child.py", "_base_ = ['gone.py']\nx = 1\n")
    with pytest.raises(ConfigError, match=r"child.py: _base_ file not found: .*gone.py"):
        load_config(tmp_path / "child.py")


def test_cfg_options_cannot_set_a_key_inside_a_number():
    cfg = {"model": {"backbone": {"depth": 18}}}
    with pytest.raises(ConfigError, match="'model.backbone.depth' is 18, not a dict or list to set 'x' in"):
        apply_cfg_options(cfg, ["model.backbone.depth.x=1"])


def test_cfg_options_on_a_named_pipeline_reach_the_dataloaders_that_use_it():
    pipeline = [{"type": "SampleFrames", "clip_len": 8}, {"type": "Resize"}]
    cfg = {
        "train_pipeline": pipeline,
        "train_dataloader": {"dataset": {"type": "VideoDataset", "pipeline": list(pipeline)}},
        "val_dataloader": {"dataset": {"type": "VideoDataset", "pipeline": [{"type": "Other"}]}},
    }
    out = apply_cfg_options(cfg, ["train_pipeline.0.clip_len=16"])
    assert out["train_pipeline"][0]["clip_len"] == 16
    assert out["train_dataloader"]["dataset"]["pipeline"][0]["clip_len"] == 16
    assert out["val_dataloader"]["dataset"]["pipeline"] == [{"type": "Other"}]  # a pipeline of its own stays
    assert cfg["train_dataloader"]["dataset"]["pipeline"][0]["clip_len"] == 8


def test_cfg_options_on_an_absent_pipeline_point_to_the_dataloader_pipeline():
    cfg = {"train_dataloader": {"dataset": {"pipeline": [{"type": "A"}, {"type": "SampleFrames", "clip_len": 8}]}}}
    with pytest.raises(
        ConfigError, match="no top-level 'train_pipeline'.*set train_dataloader.dataset.pipeline.1.clip_len instead"
    ):
        apply_cfg_options(cfg, ["train_pipeline.1.clip_len=4"])
    assert (
        apply_cfg_options(cfg, ["train_dataloader.dataset.pipeline.1.clip_len=4"])["train_dataloader"]["dataset"][
            "pipeline"
        ][1]["clip_len"]
        == 4
    )


def test_cfg_option_words_true_false_none_in_any_case():
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
    with pytest.raises(
        ConfigError,
        match="'clip_len' is a variable of the config file.*set train_pipeline.0.clip_len, "
        "train_dataloader.dataset.pipeline.0.clip_len instead",
    ):
        apply_cfg_options(cfg, ["clip_len=4"])
    assert (
        apply_cfg_options(cfg, ["train_pipeline.0.clip_len=4"])["train_dataloader"]["dataset"]["pipeline"][0][
            "clip_len"
        ]
        == 4
    )
    assert apply_cfg_options(cfg, ["other=5"])["other"] == 5  # copied nowhere under its own name: taken as given


def test_overriding_a_variable_the_file_built_settings_from_is_refused(tmp_path):
    (tmp_path / "a.py").write_text(
        "data_root = 'data/x'\nann_file_train = f'{data_root}/train.txt'\n"
        "train_dataloader = dict(dataset=dict(ann_file=ann_file_train))\n"
    )
    cfg = load_config(tmp_path / "a.py")
    for option in ("data_root=/elsewhere", "ann_file_train=/x.txt"):
        with pytest.raises(ConfigError, match="is a variable of the config file.*ann_file and data_prefix"):
            apply_cfg_options(cfg, [option])


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
    with pytest.raises(
        ConfigError,
        match=r"c1.py: with its 1000 _base_ entries, reading .*c0.py follows more than "
        r"1000 _base_ entries in all \(repeats included\)",
    ):
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
    with pytest.raises(
        ConfigError,
        match=r"c0.py: its _base_ files nest more than 32 deep \(c0.py -> c1.py -> c2.py "
        r"-> \.\.\. -> c31.py -> c32.py\); a config may inherit through a chain of "
        r"at most 32 files",
    ):
        load_config(tmp_path / "c0.py")
    assert load_config(tmp_path / "c167.py") == {"x": 1}  # 32 files: the limit itself


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_configs_with_a_byte_order_mark_are_read(tmp_path, encoding):
    (tmp_path / "base.py").write_bytes("name = 'café'\n".encode(encoding))
    (tmp_path / "c.py").write_bytes("_base_ = ['base.py']\nmodel = dict(name=name)\n".encode(encoding))
    assert load_config(tmp_path / "c.py") == {"name": "café", "model": {"name": "café"}}


def test_a_config_in_another_encoding_is_refused_naming_the_file_and_the_place(tmp_path):
    (tmp_path / "c.py").write_bytes("x = 1\nname = 'café'\n".encode("cp1252"))
    with pytest.raises(
        ConfigError,
        match=r"config file '.*c.py': byte 0xe9 at offset 17 \(line 2\) is not UTF-8; "
        r"lateral reads text files as UTF-8 \(or UTF-16 with a byte-order mark\)",
    ):
        load_config(tmp_path / "c.py")
