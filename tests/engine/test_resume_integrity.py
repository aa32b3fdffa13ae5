"""``--resume auto`` and rescue checkpoints: damaged, stale or missing checkpoints, and non-finite states."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import lateral
import lateral.engine.loop
from checkpoint_damage import zero_tensor_bytes
from conftest import tiny_run_config
from lateral.checkpoint import read_checkpoint
from lateral.engine.train import NonFiniteLossError, Trainer, train


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory, motion_data) -> Path:
    """A finished two-epoch run (epoch_1.pth, epoch_2.pth = latest.pth, log.jsonl), made once per module."""
    work = tmp_path_factory.mktemp("run") / "work"
    cfg = tiny_run_config(motion_data)
    train(dict(cfg, train_cfg=dict(max_epochs=2, val_interval=5)), work, progress=False)
    return work


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a run's folder with the hard links the run made (epoch_N.pth -> latest.pth) made again."""
    shutil.copytree(source, target)
    for path in source.glob("epoch_*.pth"):
        if os.path.samefile(path, source / "latest.pth"):
            (target / path.name).unlink()
            os.link(target / "latest.pth", target / path.name)
    return target


def test_resume_auto_passes_over_checkpoints_with_damaged_tensor_bytes(tmp_path, two_epoch_run, run_config, caplog):
    work = copy_run(two_epoch_run, tmp_path / "work")
    member = zero_tensor_bytes(work / "latest.pth")  # epoch_2.pth is the same file: both are damaged
    with caplog.at_level("WARNING", logger="lateral.train"):
        trainer = Trainer(run_config, work, resume="auto", progress=False)
    assert trainer.start_epoch == 1
    assert "resuming from epoch_1.pth, because" in caplog.text
    assert f"latest.pth is damaged: its member '{member}' (tensor data" in caplog.text
    assert "epoch_2.pth is the same file as latest.pth (a hard link)" in caplog.text
    assert "(epoch_1.pth holds epoch 1, iteration" in caplog.text
    intact = read_checkpoint(work / "epoch_1.pth")["state_dict"]
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, intact[key]), key


def test_resume_auto_prefers_a_newer_epoch_checkpoint_to_a_stale_latest(tmp_path, two_epoch_run, run_config, caplog):
    work = copy_run(two_epoch_run, tmp_path / "work")
    (work / "latest.pth").unlink()
    shutil.copyfile(work / "epoch_1.pth", work / "latest.pth")  # restored from a backup: newest by mtime
    epoch_1_iter = read_checkpoint(work / "epoch_1.pth")["meta"]["iter"]
    epoch_2_iter = read_checkpoint(work / "epoch_2.pth")["meta"]["iter"]
    with caplog.at_level("WARNING", logger="lateral.train"):
        trainer = Trainer(run_config, work, resume="auto", progress=False)
    assert trainer.start_epoch == 2 and trainer.iteration == epoch_2_iter
    assert (
        f"resuming from epoch_2.pth, because latest.pth holds epoch 1, iteration {epoch_1_iter}, older than "
        f"epoch_2.pth with epoch 2, iteration {epoch_2_iter}"
    ) in caplog.text


def test_resume_auto_reads_a_hard_linked_latest_once_and_says_nothing(
    tmp_path, two_epoch_run, run_config, caplog, monkeypatch
):
    work = copy_run(two_epoch_run, tmp_path / "work")
    reads = []
    original = lateral.engine.loop.read_checkpoint  # the shared training loop reads the checkpoints
    monkeypatch.setattr(
        lateral.engine.loop, "read_checkpoint", lambda path, **kw: reads.append(path.name) or original(path, **kw)
    )
    with caplog.at_level("WARNING", logger="lateral.train"):
        trainer = Trainer(run_config, work, resume="auto", progress=False)
    assert trainer.start_epoch == 2 and reads == ["latest.pth"] and "resuming from" not in caplog.text


def test_resume_auto_without_any_checkpoint_says_so_and_keeps_the_old_log_apart(
    tmp_path, two_epoch_run, run_config, caplog
):
    work = copy_run(two_epoch_run, tmp_path / "work")
    old_log = (work / "log.jsonl").read_text()
    for path in work.glob("*.pth"):
        if path.name != "best.pth":
            path.unlink()
    with caplog.at_level("WARNING", logger="lateral.train"):
        trainer = Trainer(run_config, work, resume="auto", progress=False)
    assert trainer.start_epoch == 0
    assert (
        f"--resume auto: no checkpoint (latest.pth, epoch_N.pth) in {work}; starting from scratch. The earlier "
        "run's log is kept as log.jsonl.1 and this run writes a new log.jsonl."
    ) in caplog.text
    has_best = (work / "best.pth").exists()
    assert (
        "best.pth is still the earlier run's, until this run's first validation replaces it" in caplog.text
    ) == has_best
    assert (work / "log.jsonl.1").read_text() == old_log
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["start"] and "log.jsonl.1" in records[0]["note"]
    # a second time: the first moved log is not overwritten
    caplog.clear()
    with caplog.at_level("WARNING", logger="lateral.train"):
        Trainer(run_config, work, resume="auto", progress=False)
    assert "kept as log.jsonl.2" in caplog.text and (work / "log.jsonl.1").read_text() == old_log
    # a fresh folder: nothing moved, and no warning (the demo's first run), only an info line
    caplog.clear()
    with caplog.at_level("INFO", logger="lateral.train"):
        Trainer(run_config, tmp_path / "fresh", resume="auto", progress=False)
    assert "no checkpoint (latest.pth, epoch_N.pth) in" in caplog.text and "log.jsonl" not in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "no checkpoint" in r.getMessage()]


def nonfinite(state) -> list[str]:
    """The keys of a (possibly nested) state dict whose floating-point tensors hold NaN or infinity."""
    if isinstance(state, torch.Tensor):
        return [] if not state.is_floating_point() or torch.isfinite(state).all() else [""]
    if isinstance(state, dict):
        return [f"{k}.{sub}".rstrip(".") for k, v in state.items() for sub in nonfinite(v)]
    if isinstance(state, (list, tuple)):
        return [f"{i}.{sub}".rstrip(".") for i, v in enumerate(state) for sub in nonfinite(v)]
    return []


def huge_lr_config(motion_data: Path, lr: float = 1e3) -> dict:
    cfg = tiny_run_config(motion_data, epochs=3, lr=lr)
    cfg["optim_wrapper"] = dict(optimizer=dict(type="SGD", lr=lr, momentum=0.9))  # no clip_grad
    cfg["param_scheduler"] = None
    return cfg


@pytest.mark.slow
def test_nan_rescue_checkpoint_is_finite_in_every_tensor_and_says_whether_it_predicts(tmp_path, motion_data):
    """At lr=1e3 the activations overflow: a BatchNorm running_var becomes infinite while the loss is still
    finite (x / sqrt(inf) = 0), a few steps before the loss turns NaN. Training stops there; the rescue checkpoint
    is the state before that step, finite in every tensor, and the message says plainly that its diverged weights
    still predict non-finite scores."""
    trainer = Trainer(huge_lr_config(motion_data), tmp_path / "nan", progress=False)
    with pytest.raises(
        NonFiniteLossError,
        match=r"the BatchNorm statistics became non-finite \(.*running_var.*; "
        r"the activations overflowed\) although the loss was .* at iteration "
        r"\d+ .*; the model before this step is saved in .*nonfinite_iter\d+"
        r"\.pth, but in eval mode it predicts non-finite scores for this "
        r"step's clips \(its weights had already diverged\): it is kept for "
        r"inspection, not for use\. Lower the learning rate or enable "
        r"clip_grad\.",
    ) as info:
        trainer.run()
    [rescue] = (tmp_path / "nan").glob("nonfinite_iter*.pth")
    assert rescue.name in str(info.value)
    ckpt = read_checkpoint(rescue)
    assert nonfinite(ckpt["state_dict"]) == [] and nonfinite(ckpt["optimizer"]) == []


def test_a_rescue_from_one_bad_batch_predicts_finite_scores(tmp_path, run_config):
    """One batch of NaN clips (a broken decode): the model before it is sound, and the message does not warn."""
    trainer = Trainer(run_config, tmp_path / "nan", progress=False)
    model = trainer.ddp_model
    calls = []

    def forward_nan_on_second_step(clips):
        calls.append(1)
        return model(torch.full_like(clips, float("nan")) if len(calls) == 2 else clips)

    trainer.ddp_model = forward_nan_on_second_step
    with pytest.raises(NonFiniteLossError, match="the loss became nan at iteration 2 ") as info:
        trainer.run()
    assert "nonfinite_iter2.pth. Lower the learning rate" in str(info.value)
    ckpt = read_checkpoint(tmp_path / "nan" / "nonfinite_iter2.pth")
    assert nonfinite(ckpt["state_dict"]) == [] and nonfinite(ckpt["optimizer"]) == []
    rescued = lateral.build_model(ckpt["meta"]["config"]["model"])
    lateral.load_checkpoint(rescued, ckpt)
    with torch.no_grad():
        assert torch.isfinite(rescued.eval()(torch.randn(2, 3, 8, 32, 32))).all()


def test_nan_stop_with_a_non_finite_statistic_already_there_writes_no_rescue(tmp_path, run_config):
    trainer = Trainer(run_config, tmp_path / "nan", progress=False)
    name, buffer = next((n, b) for n, b in trainer.model.named_buffers() if n.endswith("running_var"))
    with torch.no_grad():
        buffer[0] = float("inf")
    with pytest.raises(
        NonFiniteLossError,
        match=rf"at iteration 1 .*the model's state was already non-finite before "
        rf"this step \({name}: an earlier update overflowed\), so no finite "
        r"state of this epoch exists and no rescue checkpoint was written; no "
        r"epoch had finished yet\.",
    ):
        trainer.run()
    assert not list((tmp_path / "nan").glob("nonfinite_*.pth"))


def test_an_epoch_that_ends_with_non_finite_weights_does_not_replace_latest(tmp_path, run_config):
    trainer = Trainer(dict(run_config, train_cfg=dict(max_epochs=2, val_interval=5)), tmp_path / "run", progress=False)
    trainer.max_epochs = 1
    trainer.run()
    before = (tmp_path / "run" / "latest.pth").read_bytes()
    with torch.no_grad():
        trainer.model.cls_head.fc_cls.weight[0, 0] = float("nan")
    with pytest.raises(
        NonFiniteLossError,
        match=r"the model became non-finite in the last update before saving "
        r"epoch_2\.pth \(cls_head\.fc_cls\.weight\), so it was not saved",
    ):
        trainer.save(2)
    assert (tmp_path / "run" / "latest.pth").read_bytes() == before and not (tmp_path / "run" / "epoch_2.pth").exists()
