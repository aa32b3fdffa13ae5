"""Training engine: checkpoints, resume after SIGKILL, NaN stop, bad data, CLI test/predict."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import lateral
from conftest import tiny_run_config
from lateral.checkpoint import read_checkpoint
from lateral.config import ConfigError, write_config
from lateral.engine.train import NonFiniteLossError, NoTrainingDataError, Trainer, train

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_training_writes_checkpoints_logs_and_validates(tmp_path, run_config, capsys):
    result = train(run_config, tmp_path / "run", progress=False)
    said = capsys.readouterr()
    # one terminal line per epoch, even without progress bars; on stderr, so that stdout keeps a command's result
    assert re.findall(r"^epoch (\d)/2  loss [\d.]+ \(\d+ s\)  val top-1 [\d.]+ %, top-5 [\d.]+ %$", said.err, re.M) == [
        "1",
        "2",
    ], said.err
    assert said.out == ""
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"epoch_1.pth", "epoch_2.pth", "latest.pth", "best.pth", "log.jsonl"} <= names
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0.0 <= r["val_top1_acc"] <= 1.0 and r["loss"] > 0 for r in epochs)
    ckpt = read_checkpoint(tmp_path / "run" / "latest.pth")
    assert ckpt["meta"]["epoch"] == 2 and set(ckpt) >= {"state_dict", "optimizer", "scheduler", "rng"}
    model = lateral.build_model(ckpt["meta"]["config"]["model"])
    lateral.load_checkpoint(model, tmp_path / "run" / "latest.pth")  # strict
    assert result["history"][-1]["epoch"] == 2


@pytest.mark.slow
def test_resume_continues_to_the_same_weights(tmp_path, run_config):
    train(run_config, tmp_path / "straight", progress=False)
    one_epoch = dict(run_config, train_cfg=dict(max_epochs=2, val_interval=1))
    trainer = Trainer(one_epoch, tmp_path / "resumed", progress=False)
    trainer.max_epochs = 1  # stop after epoch 1, as a killed run would
    trainer.run()
    resumed = Trainer(run_config, tmp_path / "resumed", resume="auto", progress=False)
    assert resumed.start_epoch == 1
    resumed.run()
    a = read_checkpoint(tmp_path / "straight" / "latest.pth")["state_dict"]
    b = read_checkpoint(tmp_path / "resumed" / "latest.pth")["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_sigkill_then_resume_auto(tmp_path, run_config):
    # enough epochs that the run cannot finish between the first checkpoint and the kill on a fast machine
    cfg = dict(run_config, train_cfg=dict(max_epochs=12, val_interval=20))
    path = tmp_path / "cfg.py"
    write_config(cfg, path)
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "lateral", "train", str(path), "--work-dir", str(work), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (work / "epoch_1.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert (work / "epoch_1.pth").exists(), "the run never finished its first epoch"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = read_checkpoint(work / "latest.pth")["meta"]["epoch"]
    assert 1 <= finished < 12
    # what a kill inside a save leaves behind (the kill above may or may not have landed in one): resume removes it
    (work / ".latest.pth.killed.tmp").write_bytes(b"partial")
    done = subprocess.run(cmd + ["--resume", "auto"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    resume = [r for r in records if r["event"] == "resume"]
    assert resume and resume[-1]["epoch"] == finished
    assert read_checkpoint(work / "latest.pth")["meta"]["epoch"] == 12
    assert [p.name for p in work.glob("*.tmp")] == []


@pytest.mark.slow
def test_bf16_autocast_training_with_alpha_8_laterals_stays_finite(tmp_path, run_config):
    """--amp bf16 on the CPU with alpha = 8 laterals (kernel 5, stride 8, as in the 4x16 model) trains: loss,
    weights and validation scores stay finite and the checkpoint holds fp32 weights. (The channel counts here are
    too small to hit oneDNN's bf16 bug itself; tests/models/test_layers.py covers that.)"""
    backbone = dict(run_config["model"]["backbone"], resample_rate=8, speed_ratio=8)
    cfg = dict(
        run_config, model=dict(run_config["model"], backbone=backbone), train_cfg=dict(max_epochs=1, val_interval=1)
    )
    result = train(cfg, tmp_path / "amp", amp="bf16", progress=False)
    epoch = result["history"][-1]
    assert torch.isfinite(torch.tensor(epoch["loss"])) and epoch["loss"] > 0
    assert 0.0 <= epoch["val_top1_acc"] <= 1.0
    state = read_checkpoint(tmp_path / "amp" / "latest.pth")["state_dict"]
    lateral_weight = state["backbone.slow_path.conv1_lateral.conv.weight"]
    assert lateral_weight.shape[2] == 5 and lateral_weight.dtype == torch.float32  # autocast keeps fp32 masters
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_saves_the_model_before_the_failing_step(tmp_path, run_config):
    """The rescue checkpoint holds the weights and BatchNorm statistics from before the step whose loss was NaN
    (the failing forward has already put NaN into the running statistics), named by the step's 1-based number."""
    trainer = Trainer(run_config, tmp_path / "nan", progress=False)
    model = trainer.ddp_model
    calls = []

    def forward_nan_on_second_step(clips):
        calls.append(1)
        return model(torch.full_like(clips, float("nan")) if len(calls) == 2 else clips)

    trainer.ddp_model = forward_nan_on_second_step
    with pytest.raises(NonFiniteLossError, match="at iteration 2 ") as info:
        trainer.run()
    rescue = tmp_path / "nan" / "nonfinite_iter2.pth"
    assert rescue.exists() and "nonfinite_iter2.pth" in str(info.value)
    ckpt = read_checkpoint(rescue)
    assert ckpt["meta"]["iter"] == 1
    running = [k for k in ckpt["state_dict"] if k.endswith("running_mean")]
    assert running and all(torch.isfinite(ckpt["state_dict"][k]).all() for k in running)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    # it is the model as it stands after the (undone) failing forward: resuming from it repeats nothing broken
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][key]), key


def test_nan_loss_from_non_finite_weights_writes_no_useless_rescue(tmp_path, run_config):
    trainer = Trainer(run_config, tmp_path / "nan", progress=False)
    with torch.no_grad():
        trainer.model.cls_head.fc_cls.bias[0] = float("nan")
    with pytest.raises(
        NonFiniteLossError,
        match=r"iteration 1 .*already non-finite.*no epoch had finished yet\. "
        r"Lower the learning rate \(clip_grad is already on\)",
    ):
        trainer.run()
    assert not list((tmp_path / "nan").glob("nonfinite_*.pth"))


def test_missing_dataset_fails_before_any_work(tmp_path, run_config):
    cfg = json.loads(json.dumps(run_config))
    cfg["train_dataloader"]["dataset"]["ann_file"] = str(tmp_path / "nope.txt")
    with pytest.raises((ConfigError, FileNotFoundError), match="nope.txt"):
        Trainer(cfg, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_corrupt_videos_are_skipped_and_counted(tmp_path, motion_data):
    bad = tmp_path / "bad.mp4"
    good = (motion_data / "videos").rglob("*.mp4").__next__()
    bad.write_bytes(good.read_bytes()[:300])  # truncated
    lines = (motion_data / "train_list.txt").read_text().splitlines()
    ann = tmp_path / "train_with_bad.txt"
    ann.write_text("\n".join(lines + [f"{bad} 0", f"{tmp_path / 'missing.mp4'} 1"]) + "\n")
    cfg = tiny_run_config(motion_data, epochs=2, ann_train=str(ann))
    val_ann = tmp_path / "val_with_bad.txt"
    val_ann.write_text(Path(cfg["val_dataloader"]["dataset"]["ann_file"]).read_text() + f"{bad} 0\n")
    cfg["val_dataloader"]["dataset"]["ann_file"] = str(val_ann)
    result = train(cfg, tmp_path / "run", progress=False)
    assert [epoch["failed_samples"] for epoch in result["history"]] == [2, 2]
    assert result["history"][-1]["iters"] >= 1
    # validation too: each epoch's record counts that epoch's unreadable val files
    assert [epoch["val_failed_samples"] for epoch in result["history"]] == [1, 1]


@pytest.mark.slow
def test_cli_test_and_predict(tmp_path, run_config, config_file, motion_data):
    train(run_config, tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "latest.pth"
    env = dict(os.environ)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lateral",
            "test",
            str(config_file),
            str(ckpt),
            "--views",
            "1x3",
            "--out",
            str(tmp_path / "test"),
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["num_samples"] == 8 and 0 <= metrics["top1_acc"] <= 1
    assert (tmp_path / "test" / "confusion_matrix.png").stat().st_size > 1000
    from lateral.cli import main  # a training checkpoint carries its config: CKPT alone is enough

    assert main(["test", str(ckpt), "--views", "1x3", "--out", str(tmp_path / "test_ckpt"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "test_ckpt" / "metrics.json").read_text())["top1_acc"] == metrics["top1_acc"]
    video = sorted((motion_data / "videos").rglob("*test*.mp4"))[0]  # the same file whatever the listing order
    out = subprocess.run(
        [sys.executable, "-m", "lateral", "predict", str(config_file), str(ckpt), str(video), "--topk", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all(float(line.split()[0]) <= 1 for line in lines)
    names = (motion_data / "label_map.txt").read_text().split()
    assert lines[0].split()[1] in names
    # the default runs the fused inference copy; --eager the model as built; --backend openvino (when installed)
    # OpenVINO: same classes, same probabilities
    import importlib.util

    modes = {"fused": [], "eager": ["--eager"]}
    if importlib.util.find_spec("openvino") is not None:
        modes["openvino"] = ["--backend", "openvino"]
    tops = {}
    for mode, extra in modes.items():
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "lateral",
                "predict",
                str(config_file),
                str(ckpt),
                str(video),
                "--topk",
                "8",
                "--out",
                str(tmp_path / f"{mode}.json"),
                *extra,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        tops[mode] = json.loads((tmp_path / f"{mode}.json").read_text())["top"]
    for mode in modes:
        assert [t["class"] for t in tops[mode]] == [t["class"] for t in tops["eager"]], mode
        for got, eager in zip(tops[mode], tops["eager"]):
            assert abs(got["prob"] - eager["prob"]) < 1e-4, mode
    from lateral.inference import bf16_supported

    if not bf16_supported():
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "lateral",
                "predict",
                str(config_file),
                str(ckpt),
                str(video),
                "--precision",
                "bf16",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert out.returncode != 0 and "bf16" in out.stderr and "Traceback" not in out.stderr
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "lateral",
                "predict",
                str(config_file),
                str(ckpt),
                str(video),
                "--precision",
                "bf16",
                "--fallback-fp32",
                "--topk",
                "8",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert [float(line.split()[0]) for line in out.stdout.split("\n") if line.strip()] == pytest.approx(
            [t["prob"] for t in tops["eager"]], abs=1e-4
        )
    # a checkpoint written by training carries its config: CKPT VIDEO is enough
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lateral",
            "predict",
            str(ckpt),
            str(video),
            "--window",
            "0.32s",
            "--stride",
            "0.16s",
            "--out",
            str(tmp_path / "timeline"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "timeline" / "timeline.json").read_text())
    assert len(rows) >= 2 and rows[0]["start_s"] == 0.0
    assert (tmp_path / "timeline" / "timeline.png").exists()


def test_cli_test_leaves_unlabelled_samples_out_and_refuses_a_list_without_labels(
    tmp_path, run_config, config_file, motion_data, capsys
):
    from lateral.cli import main

    ckpt = tmp_path / "random.pth"
    torch.save({"state_dict": lateral.build_model(run_config["model"]).state_dict()}, ckpt)
    lines = (motion_data / "test_list.txt").read_text().splitlines()
    half = tmp_path / "half_labelled.txt"
    half.write_text("".join(f"{line.rsplit(' ', 1)[0]} -1\n" if i % 2 else f"{line}\n" for i, line in enumerate(lines)))
    none = tmp_path / "unlabelled.txt"
    none.write_text("".join(f"{line.rsplit(' ', 1)[0]}\n" for line in lines))  # test lists may omit the labels
    args = ["test", str(config_file), str(ckpt), "--no-progress", "--out", str(tmp_path / "out"), "--cfg-options"]
    assert main(args + [f"test_dataloader.dataset.ann_file={half}"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_samples"] == len(lines) // 2 and metrics["num_unlabelled"] == len(lines) - len(lines) // 2
    assert sum(map(sum, metrics["confusion_matrix"])) == len(lines) // 2  # -1 is not counted in any row
    assert "unlabelled samples (label -1) were left out" in capsys.readouterr().err
    assert main(args + [f"test_dataloader.dataset.ann_file={none}"]) == 1
    assert f"none of the {len(lines)} test samples has a label" in capsys.readouterr().err
    assert main(["test", str(config_file), "--no-progress"]) == 1
    assert "needs a CHECKPOINT to test" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_prints_the_class_of_a_video_the_model_was_overfit_on(tmp_path, motion_data):
    lines = (motion_data / "train_list.txt").read_text().splitlines()
    chosen = [next(line for line in lines if line.endswith(f" {label}")) for label in (2, 5)]
    ann = tmp_path / "two_videos.txt"
    ann.write_text("\n".join(chosen) + "\n")
    cfg = tiny_run_config(motion_data, epochs=30, lr=0.05, ann_train=str(ann))
    fixed = [
        dict(type="PyAVInit"),
        dict(type="SampleFrames", clip_len=8, frame_interval=2, num_clips=1, test_mode=True),
        dict(type="PyAVDecode"),
        dict(type="Resize", scale=(32, 32), keep_ratio=False),
        dict(type="FormatShape", input_format="NCTHW"),
        dict(type="PackActionInputs"),
    ]
    cfg["train_dataloader"]["dataset"]["pipeline"] = fixed
    cfg["train_dataloader"]["batch_size"] = 2
    cfg["param_scheduler"] = None
    cfg.pop("val_dataloader")
    train(cfg, tmp_path / "overfit", progress=False)
    names = (motion_data / "label_map.txt").read_text().split()
    for line in chosen:
        rel, label = line.rsplit(" ", 1)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "lateral",
                "predict",
                str(tmp_path / "overfit" / "latest.pth"),
                str(motion_data / rel),
                "--topk",
                "1",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[1] == names[int(label)], out.stdout


@pytest.mark.slow
def test_demo_quick_writes_a_full_report(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "lateral", "demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = tmp_path / "demo" / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["test_videos"] == 16 and len(metrics["classes"]) == 8
    assert 0.0 <= metrics["top1_acc"] <= 1.0 and len(metrics["predictions"]) == 8
    for name in ("confusion_matrix.png", "training_curve.png", "demo_config.py", "predictions.json"):
        assert (report / name).stat().st_size > 0, name
    assert lateral.load_config(report / "demo_config.py")["model"]["type"] == "Recognizer3D"
    # the terminal: validation accuracy after every epoch, then a short summary naming the report folder
    assert re.search(r"^epoch 1/1  loss [\d.]+ \(\d+ s\)  val top-1 [\d.]+ %, top-5 [\d.]+ %$", out.stderr, re.M), (
        out.stderr[-2000:]
    )
    assert "writing videos" not in out.stderr  # --no-progress: no progress bar
    assert "--resume auto" not in out.stderr  # a first run in a new folder has no checkpoint to miss
    assert f"top-1 {100 * metrics['top1_acc']:.1f} %" in out.stdout
    assert "over 16 videos x 3 views" in out.stdout and f"report: {report.resolve()}" in out.stdout
    assert len(out.stdout.splitlines()) <= 6 and "{" not in out.stdout  # the JSON is in the report, not printed


def test_demo_config_reads_from_any_folder_and_defines_each_pipeline_once(tmp_path, motion_data, monkeypatch):
    """The demo writes its data folder relative to the working folder (--out lateral_demo); the config it leaves
    must still find the data from elsewhere, and its loaders must use the pipelines the file shows."""
    from lateral.data import build_dataset
    from lateral.engine.demo import write_demo_config

    config = tmp_path / "report" / "demo_config.py"
    config.parent.mkdir()
    monkeypatch.chdir(motion_data.parent)
    write_demo_config(config, Path(motion_data.name), epochs=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = lateral.load_config(config)
    assert Path(cfg["label_map"]).is_file()
    for split, pipeline in (("train", "train_pipeline"), ("val", "test_pipeline"), ("test", "test_pipeline")):
        dataset_cfg = cfg[f"{split}_dataloader"]["dataset"]
        assert dataset_cfg["pipeline"] == cfg[pipeline], split
        assert len(build_dataset(dataset_cfg)) > 0
    # the top-level pipeline is the one training uses: a typo in it stops the run instead of being ignored
    text = config.read_text()
    assert text.count("RandomResizedCrop") == 1 and text.count("CenterCrop") == 1
    config.write_text(text.replace("RandomResizedCrop", "RandomResizedCorp"))
    with pytest.raises(ConfigError, match="RandomResizedCorp"):
        build_dataset(lateral.load_config(config)["train_dataloader"]["dataset"])


def test_amp_bf16_without_native_bf16_warns_and_fp16_needs_a_gpu(monkeypatch):
    from lateral.engine.train import resolve_amp
    from lateral.inference import optimization

    cpu = torch.device("cpu")
    monkeypatch.setattr(optimization, "bf16_supported", lambda device="cpu": False)
    with pytest.warns(UserWarning, match="no native bf16"):
        assert resolve_amp("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(optimization, "bf16_supported", lambda device="cpu": True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_amp("bf16", cpu) is torch.bfloat16
    assert resolve_amp(None, cpu) is None and resolve_amp("none", cpu) is None
    with pytest.raises(ConfigError, match="needs a GPU"):
        resolve_amp("fp16", cpu)
    with pytest.raises(ConfigError, match="must be bf16, fp16 or none"):
        resolve_amp("int8", cpu)


@pytest.mark.slow
def test_channels_last_training_matches_the_default_layout(tmp_path, run_config):
    cfg = dict(run_config, train_cfg=dict(max_epochs=1, val_interval=1))
    trainer = Trainer(dict(cfg, channels_last=True), tmp_path / "cl", progress=False)
    conv = trainer.model.backbone.slow_path.conv1.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    trainer.run()
    trainer.close()
    train(cfg, tmp_path / "default", progress=False)
    a = read_checkpoint(tmp_path / "cl" / "latest.pth")["state_dict"]
    b = read_checkpoint(tmp_path / "default" / "latest.pth")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:  # same data, same seeds: only the convolution kernels' summation order differs
        torch.testing.assert_close(a[key].contiguous(), b[key], rtol=1e-3, atol=1e-4, msg=key)
    untrained = Trainer(cfg, tmp_path / "untrained", progress=False)  # same seed, so the same initial weights
    init = untrained.model.state_dict()
    untrained.close()
    moved = [k for k in b if b[k].is_floating_point() and (b[k] - init[k]).abs().max() > 1e-3]
    assert len(moved) > 10  # both runs really trained, so the agreement above means something


@pytest.mark.parametrize(
    "section, key, message",
    [
        ("train_cfg", "max_epoch", "train_cfg: unknown key 'max_epoch'. Did you mean 'max_epochs'"),
        ("randomness", "sed", "randomness: unknown key 'sed'. Did you mean 'seed'"),
        ("test_dataloader", "batch_sise", "test_dataloader: unknown key 'batch_sise'. Did you mean 'batch_size'"),
    ],
)
def test_misspelt_runtime_keys_stop_training_before_any_work(tmp_path, run_config, section, key, message):
    cfg = json.loads(json.dumps(run_config))
    cfg[section][key] = 3
    with pytest.raises(ConfigError, match=message):
        Trainer(cfg, tmp_path / "never", progress=False)
    cfg = json.loads(json.dumps(run_config))
    cfg["default_hooks"]["checkpoint"]["intervall"] = 5
    with pytest.raises(ConfigError, match="default_hooks.checkpoint: unknown key 'intervall'. Did you mean 'interval'"):
        Trainer(cfg, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "option, message",
    [
        ("param_scheduler.0.ned=1", r"param_scheduler.0 \(LinearLR\): unknown key 'ned'. Did you mean 'end'"),
        (
            "optim_wrapper.clip_grad.max_nrm=3",
            "optim_wrapper.clip_grad: unknown key 'max_nrm'. Did you mean 'max_norm'",
        ),
        (
            "train_dataloader.sampler.shufle=False",
            "train_dataloader.sampler: unknown key 'shufle'. Did you mean 'shuffle'",
        ),
        ("precise_bn.num_iter=2", "precise_bn: unknown key 'num_iter'. Did you mean 'num_iters'"),
        ("optim_wrapper.optimizer.lrr=0.1", r"optim_wrapper.optimizer \(SGD\): unknown key 'lrr'. Did you mean 'lr'"),
        ("default_hooks.checkpoint.max_keep_ckpts=abc", "max_keep_ckpts must be a whole number"),
        ("channels_last=0", "channels_last must be True or False"),
    ],
)
def test_misspelt_keys_of_schedules_optimizers_samplers_and_flags_are_refused(tmp_path, run_config, option, message):
    from lateral.config import apply_cfg_options

    cfg = dict(
        run_config,
        param_scheduler=[dict(type="LinearLR", start_factor=0.5, by_epoch=True, begin=0, end=1)],
        optim_wrapper=dict(run_config["optim_wrapper"], clip_grad=dict(max_norm=40)),
        train_dataloader=dict(run_config["train_dataloader"], sampler=dict(type="DefaultSampler", shuffle=True)),
        precise_bn=dict(num_iters=2),
    )
    Trainer(cfg, tmp_path / "fine", progress=False).close()  # the spelled-right config trains
    with pytest.raises(ConfigError, match=message):
        Trainer(apply_cfg_options(cfg, [option]), tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


def test_an_epoch_without_one_readable_sample_fails_and_saves_nothing(tmp_path, motion_data):
    lines = (motion_data / "train_list.txt").read_text().splitlines()
    ann = tmp_path / "all_missing.txt"
    ann.write_text("".join(f"{tmp_path / 'gone'}_{i}.mp4 {line.split()[-1]}\n" for i, line in enumerate(lines)))
    cfg = tiny_run_config(motion_data, epochs=2, ann_train=str(ann))
    with pytest.raises(
        NoTrainingDataError,
        match=f"epoch 1: not one training batch could be read from the "
        f"{len(lines)} samples; nothing was trained or saved",
    ) as caught:
        train(cfg, tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").glob("*.pth"))
    assert f"{len(lines)} sample reads failed" in str(caught.value)  # each sample read once, not once per batch


@pytest.mark.slow
def test_predict_takes_several_videos_and_folders_and_skips_undecodable_ones(tmp_path, config_file, motion_data):
    videos = sorted((motion_data / "videos").rglob("*test*.mp4"))[:2]
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / videos[0].name).write_bytes(videos[0].read_bytes())
    (folder / "broken.mp4").write_bytes(videos[1].read_bytes()[:200])
    (folder / "notes.txt").write_text("not a video")
    (folder / "sub").mkdir()
    (folder / "sub" / "deeper.mp4").write_bytes(videos[0].read_bytes())  # subfolders are searched, as data check does
    (folder / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")  # a broken link: counted, not dropped
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lateral",
            "predict",
            str(config_file),
            "none",
            str(videos[1]),
            str(folder),
            "--topk",
            "2",
            "--out",
            str(tmp_path / "top.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1, out.stderr  # two videos could not be read
    assert "Traceback" not in out.stderr
    assert f"2 of 5 videos could not be decoded: {folder / 'broken.mp4'}, {folder / 'gone.mp4'}" in out.stderr
    results = json.loads((tmp_path / "top.json").read_text())
    assert [r["video"] for r in results] == [
        str(videos[1]),
        str(folder / videos[0].name),
        str(folder / "sub" / "deeper.mp4"),
    ]
    assert all(len(r["top"]) == 2 for r in results)
    # one undecodable video on its own: the error line, no traceback
    out = subprocess.run(
        [sys.executable, "-m", "lateral", "predict", str(config_file), "none", str(folder / "broken.mp4")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "lateral predict: error:" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "lateral", "predict", str(config_file), "none"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 1 and "predict takes CONFIG CKPT VIDEO [VIDEO ...]" in out.stderr


def test_timeline_folders_of_same_named_videos_do_not_collide_and_durations_are_finite():
    from lateral.cli.recognition import timeline_folder_names
    from lateral.engine.predict import parse_seconds

    videos = [Path("a/clip.mp4"), Path("b/clip.mp4"), Path("b/clip.webm"), Path("c/other.mp4")]
    names = timeline_folder_names(videos)
    assert len(set(names.values())) == 4
    assert names[Path("c/other.mp4")] == "other_timeline"
    assert names[Path("a/clip.mp4")] == "a_clip_mp4_timeline" and names[Path("b/clip.webm")] == "b_clip_webm_timeline"
    assert parse_seconds("500ms") == 0.5 and parse_seconds("2s") == 2.0
    for text in ("inf", "nan", "-infs"):
        with pytest.raises(ConfigError, match="finite number of seconds"):
            parse_seconds(text)


def test_label_names_read_every_documented_label_map_layout(tmp_path):
    from lateral.engine.loading import read_label_names

    layouts = {
        "plain.txt": "run\nwalk\njump\n",
        "indexed.txt": "1 run\n2 walk\n3 jump\n",
        "map.csv": "id,name\n0,run\n1,walk\n2,jump\n",
    }
    for name, text in layouts.items():
        (tmp_path / name).write_text(text)
        assert read_label_names(str(tmp_path / name), {}, 3) == ["run", "walk", "jump"], name


def test_three_crop_views_span_the_short_side_the_pipeline_resizes_to():
    from lateral.engine.predict import set_test_views

    pipeline = [
        dict(type="SampleFrames", clip_len=8),
        dict(type="Resize", scale=(-1, 64)),
        dict(type="CenterCrop", crop_size=56),
    ]
    three = set_test_views(pipeline, 3, 2)
    assert three[2] == dict(type="ThreeCrop", crop_size=64) and three[0]["num_clips"] == 2
    assert set_test_views(pipeline, 10, 1)[2] == dict(type="TenCrop", crop_size=56)
    assert pipeline[2] == dict(type="CenterCrop", crop_size=56)  # the input is not changed


def test_bad_counts_devices_and_learning_rates_are_named(tmp_path, run_config):
    from lateral.engine.distributed import resolve_device

    for section, key, value, message in [
        ("train_cfg", "max_epochs", -3, "train_cfg.max_epochs must be a whole number >= 1, got -3"),
        ("train_cfg", "val_interval", "abc", "train_cfg.val_interval must be a whole number >= 1"),
    ]:
        cfg = json.loads(json.dumps(run_config))
        cfg[section][key] = value
        with pytest.raises(ConfigError, match=message):
            Trainer(cfg, tmp_path / "never", progress=False)
    cfg = json.loads(json.dumps(run_config))
    cfg["optim_wrapper"]["optimizer"]["lr"] = "fast"
    with pytest.raises(ConfigError, match="optim_wrapper.optimizer.lr must be a positive number, got 'fast'"):
        Trainer(cfg, tmp_path / "never", progress=False)
    cfg = json.loads(json.dumps(run_config))
    cfg["train_cfgg"] = cfg.pop("train_cfg")
    with pytest.raises(ConfigError, match="Did you mean 'train_cfg'"):
        Trainer(cfg, tmp_path / "never", progress=False)
    with pytest.raises(ValueError, match="'gpu' is not a device name"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="lateral runs on cpu or cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU here"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_labels_beyond_the_model_classes_and_a_bad_seed_stop_training_before_any_work(
    tmp_path, run_config, motion_data
):
    lines = (motion_data / "test_list.txt").read_text().splitlines()
    ann = tmp_path / "val_oor.txt"
    ann.write_text("\n".join(lines[:-1] + [lines[-1].rsplit(" ", 1)[0] + " 99"]) + "\n")
    cfg = json.loads(json.dumps(run_config))
    cfg["val_dataloader"]["dataset"]["ann_file"] = str(ann)
    num_classes = cfg["model"]["cls_head"]["num_classes"]
    with pytest.raises(ConfigError, match=f"(?s)val_dataloader: 1 sample.* outside 0..{num_classes - 1}.*label 99"):
        Trainer(cfg, tmp_path / "never", progress=False)
    train_lines = (motion_data / "train_list.txt").read_text().splitlines()
    unlabelled = tmp_path / "train_unlabelled.txt"
    unlabelled.write_text("\n".join(train_lines[1:] + [train_lines[0].rsplit(" ", 1)[0] + " -1"]) + "\n")
    cfg = json.loads(json.dumps(run_config))
    cfg["train_dataloader"]["dataset"]["ann_file"] = str(unlabelled)
    with pytest.raises(ConfigError, match=r"(?s)train_dataloader: 1 sample.*\(-1, unlabelled, is allowed in test"):
        Trainer(cfg, tmp_path / "never", progress=False)
    none = tmp_path / "val_unlabelled.txt"
    none.write_text("".join(f"{line.rsplit(' ', 1)[0]}\n" for line in lines))
    cfg = json.loads(json.dumps(run_config))
    cfg["val_dataloader"]["dataset"]["ann_file"] = str(none)
    with pytest.raises(ConfigError, match="val_dataloader: none of the 8 samples has a label"):
        Trainer(cfg, tmp_path / "never", progress=False)
    cfg = json.loads(json.dumps(run_config))
    cfg["randomness"]["seed"] = "abc"
    with pytest.raises(ConfigError, match="randomness.seed must be a whole number"):
        Trainer(cfg, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_mixup_blending_from_the_data_preprocessor_trains_on_soft_labels(tmp_path, run_config):
    num_classes = run_config["model"]["cls_head"]["num_classes"]
    preprocessor = dict(
        run_config["model"]["data_preprocessor"],
        blending=dict(
            type="RandomBatchAugment",
            augments=[
                dict(type="MixupBlending", num_classes=num_classes, alpha=0.2),
                dict(type="CutmixBlending", num_classes=num_classes, alpha=0.2),
            ],
        ),
    )
    cfg = dict(
        run_config,
        model=dict(run_config["model"], data_preprocessor=preprocessor),
        train_cfg=dict(max_epochs=1, val_interval=5),
    )
    trainer = Trainer(cfg, tmp_path / "mix", progress=False)
    seen = []
    loss = trainer.model.cls_head.loss
    trainer.model.cls_head.loss = lambda scores, labels: seen.append(labels) or loss(scores, labels)
    trainer.run()
    assert seen and all(labels.shape[1] == num_classes and labels.dtype == torch.float32 for labels in seen)
    assert any((labels > 0).sum(dim=1).max() == 2 for labels in seen)  # some labels are mixes of two classes
    wrong = dict(preprocessor, blending=dict(type="MixupBlending", num_classes=num_classes + 1))
    with pytest.raises(
        ConfigError, match=f"blending has num_classes={num_classes + 1}, but the model has {num_classes}"
    ):
        Trainer(dict(cfg, model=dict(cfg["model"], data_preprocessor=wrong)), tmp_path / "never", progress=False)


def test_precise_bn_counts_readable_batches_and_keeps_statistics_when_none_is_read(tmp_path, run_config, caplog):
    trainer = Trainer(dict(run_config, train_cfg=dict(max_epochs=1, val_interval=5)), tmp_path / "pbn", progress=False)
    trainer.run()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if "running_" in k}
    batch = next(b for b in trainer.train_loader if b is not None)
    trainer.train_loader = [None, None]  # every batch unreadable
    with caplog.at_level("WARNING", logger="lateral.train"):
        trainer.precise_bn(2)
    assert "precise_bn: not one training batch could be read" in caplog.text
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())  # not reset to 0 / 1
    trainer.train_loader = [None, None, batch]
    trainer.precise_bn(1)
    assert int(trainer.model.backbone.slow_path.conv1.bn.num_batches_tracked) == 1  # the None did not use it up


def test_load_from_starts_from_the_weights_and_refuses_urls_and_files_that_fit_nothing(tmp_path, run_config):
    other_head = dict(run_config["model"], cls_head=dict(run_config["model"]["cls_head"], num_classes=3))
    source = lateral.build_model(other_head)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "pretrained.pth")
    with pytest.warns(UserWarning, match="dropped 2 head tensors"):
        trainer = Trainer(dict(run_config, load_from=str(tmp_path / "pretrained.pth")), tmp_path / "a", progress=False)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(trainer.model.backbone.state_dict()[key], value), key
    torch.save({"state_dict": {"blocks.0.weight": torch.zeros(2)}}, tmp_path / "unrelated.pth")
    with pytest.raises(lateral.checkpoint.CheckpointError, match="load_from=.*unrelated.pth: not one tensor fits"):
        Trainer(dict(run_config, load_from=str(tmp_path / "unrelated.pth")), tmp_path / "b", progress=False)
    with pytest.raises(lateral.checkpoint.CheckpointError, match="lateral does not download weights"):
        Trainer(dict(run_config, load_from="https://download.openmmlab.com/x.pth"), tmp_path / "c", progress=False)


def test_a_skipped_batch_still_advances_the_learning_rate_schedule(tmp_path, run_config):
    trainer = Trainer(dict(run_config, train_cfg=dict(max_epochs=1, val_interval=5)), tmp_path / "skip", progress=False)
    readable = [b for b in trainer.train_loader if b is not None]

    class Batches(list):  # a loader whose second batch could not be read at all
        num_workers = 0
        dataset = trainer.train_loader.dataset

    trainer.train_loader = Batches([readable[0], None, *readable[1:]])
    trainer.run()
    # the schedule was planned over len(loader) steps per epoch; a skipped batch must not stretch it
    assert trainer.scheduler.last_epoch == len(readable) + 1 and trainer.iteration == len(readable)


def test_logged_lr_is_the_one_each_step_used(tmp_path, run_config):
    cfg = dict(run_config, train_cfg=dict(max_epochs=1, val_interval=5))
    train(cfg, tmp_path / "run", progress=False)
    steps = [
        json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"train"' in line
    ]
    # LinearLR(start_factor=0.5) over the first epoch: the first step runs at half the base rate of 0.01
    assert steps[0]["iter"] == 1 and steps[0]["lr"] == pytest.approx(0.005)
    assert steps[1]["lr"] > steps[0]["lr"]


def test_resume_auto_falls_back_to_the_newest_readable_epoch_checkpoint(tmp_path, run_config, caplog):
    work = tmp_path / "run"
    train(dict(run_config, train_cfg=dict(max_epochs=2, val_interval=5)), work, progress=False)
    latest = work / "latest.pth"
    latest.unlink()  # epoch_2.pth is a hard link to the same file: cut a separate copy short
    latest.write_bytes((work / "epoch_2.pth").read_bytes()[:5000])
    with caplog.at_level("WARNING", logger="lateral.train"):
        trainer = Trainer(run_config, work, resume="auto", progress=False)
    assert trainer.start_epoch == 2
    assert "resuming from epoch_2.pth, because" in caplog.text and "latest.pth" in caplog.text
    for name in ("epoch_1.pth", "epoch_2.pth"):
        (work / name).write_bytes(b"")
    with pytest.raises(lateral.checkpoint.CheckpointError, match="no checkpoint in .* can be read"):
        Trainer(run_config, work, resume="auto", progress=False)


def test_resume_refuses_weights_only_files_and_another_optimizer_with_the_way_out(tmp_path, run_config):
    work = tmp_path / "run"
    train(dict(run_config, train_cfg=dict(max_epochs=1, val_interval=5)), work, progress=False)
    saved = read_checkpoint(work / "latest.pth")
    zoo = tmp_path / "zoo" / "latest.pth"  # what a model-zoo file holds: weights and meta
    zoo.parent.mkdir()
    torch.save({"state_dict": saved["state_dict"], "meta": {}}, zoo)
    with pytest.raises(lateral.checkpoint.CheckpointError, match="holds no training state .*load_from="):
        Trainer(run_config, tmp_path / "other", resume=str(zoo), progress=False)
    with pytest.raises(lateral.checkpoint.CheckpointError, match="holds no training state"):
        Trainer(run_config, zoo.parent, resume="auto", progress=False)
    optimizer = dict(run_config["optim_wrapper"]["optimizer"])
    other_type = "AdamW" if optimizer["type"] != "AdamW" else "SGD"
    changed = dict(
        run_config, optim_wrapper=dict(run_config["optim_wrapper"], optimizer=dict(type=other_type, lr=0.01))
    )
    with pytest.raises(
        lateral.checkpoint.CheckpointError, match=f"started with optimizer {optimizer['type']} .* {other_type}"
    ):
        Trainer(changed, work, resume="auto", progress=False)


def test_checkpoints_are_as_readable_as_plain_files(tmp_path):
    from lateral.checkpoint import save_checkpoint

    previous = os.umask(0o022)
    try:
        save_checkpoint({"x": torch.zeros(1)}, tmp_path / "a.pth")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o644


def test_ctrl_c_during_training_names_resume_auto(monkeypatch, capsys, config_file):
    import lateral.engine.train as train_module
    from lateral.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    assert main(["train", str(config_file), "--no-progress"]) == 130
    assert (
        "interrupted. The checkpoints written so far are kept: the same command with --resume auto"
        in capsys.readouterr().err
    )


def test_timeline_with_a_stride_longer_than_the_video_has_one_window(motion_data, run_config):
    from lateral.engine.predict import predict_timeline
    from lateral.registry import build_model

    video = sorted((motion_data / "videos").rglob("*test*.mp4"))[0]  # 16 frames
    model = build_model(run_config["model"]).eval()
    rows = predict_timeline(model, run_config["test_pipeline"], video, window_s=0.2, stride_s=30.0)
    assert len(rows) == 1 and rows[0].start_s == 0.0 and rows[0].end_s > 0


def test_cli_counts_must_be_positive(capsys):
    from lateral.cli import main

    with pytest.raises(SystemExit):
        main(["predict", "a.py", "b.pth", "c.mp4", "--topk", "0"])
    assert "argument --topk: expected a whole number >= 1, got 0" in capsys.readouterr().err


def test_under_torchrun_an_error_before_the_ranks_join_is_said_once_per_machine(tmp_path, capsys, monkeypatch):
    from lateral.cli import main

    missing = str(tmp_path / "missing.py")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for local_rank, says in (("0", True), ("1", False)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert main(["train", missing]) == 1
        err = capsys.readouterr().err
        assert ("lateral train: error:" in err) is says, (local_rank, err)
