"""The shared training loop with a toy task: the adapter protocol, the iteration loop, mid-epoch resume."""

import json

import pytest
import torch
from torch import nn

from lateral.checkpoint import read_checkpoint
from lateral.config import ConfigError
from lateral.engine.loop import EpochSampler, LoopSettings, TrainingLoop
from lateral.errors import LateralError


class Points(torch.utils.data.Dataset):
    """y = x @ w + noise, 10 samples of 3 features; sample 4 is unreadable when ``broken``."""

    def __init__(self, broken: bool = False):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(10, 3, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(10, generator=generator)
        self.broken = broken
        self.num_failures = 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        if self.broken and index == 4:
            self.num_failures += 1
            return None
        return {"x": self.x[index], "y": self.y[index]}


def collate(items):
    items = [item for item in items if item is not None]
    if not items:
        return None
    return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}


class RegressionTask:
    """The smallest complete task: what a new task has to write to train in the loop."""

    best_meta_key = "best_fit"

    def __init__(self, cfg, broken=False):
        self.cfg = cfg
        self.broken = broken
        self.calls = []

    def check_config(self):
        self.calls.append("check_config")

    def build_loader(self, split, seed, distributed, resumable=False):
        sampler = EpochSampler(10, split == "train", seed) if resumable else None
        return torch.utils.data.DataLoader(Points(self.broken), batch_size=4, sampler=sampler, collate_fn=collate)

    def build_model(self, train_loader, val_loader):
        self.calls.append("build_model")
        return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 1))

    def prepare_model(self, model, device):
        return model.to(device)

    def losses(self, model, forward, batch, device, autocast):
        self.x = batch["x"]
        with autocast():
            return {"loss_mse": nn.functional.mse_loss(forward(batch["x"]).squeeze(1), batch["y"])}

    def predicts_finite(self, model, device, autocast):
        return bool(torch.isfinite(model(self.x)).all())

    def validate(self, model, loader, device, amp_dtype, progress):
        model.eval()
        with torch.no_grad():
            errors = [nn.functional.mse_loss(model(b["x"]).squeeze(1), b["y"]).item() for b in loader if b]
        return {"mse": sum(errors) / len(errors)}

    def score(self, metrics):
        return 1 / (1 + metrics["mse"])  # scores are >= 0: the loop starts from -1 (nothing scored yet)

    def describe_validation(self, record):
        return [f"val mse {record['val_mse']:.3f}"] if "val_mse" in record else []

    def after_train_epoch(self, loop):
        self.calls.append("after_train_epoch")

    def checkpoint_meta(self):
        return {"task": "regression"}


def config(max_iters=7, **train_cfg):
    return dict(
        model=dict(type="toy"),
        train_dataloader=dict(batch_size=4),
        val_dataloader=dict(batch_size=4),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.05, momentum=0.9)),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=max_iters, **({"val_interval": 3} | train_cfg)),
        default_hooks=dict(logger=dict(interval=1), checkpoint=dict(interval=2, by_epoch=False, max_keep_ckpts=2)),
        randomness=dict(seed=3),
    )


def records(work):
    return [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]


def test_a_task_adapter_trains_by_iterations_across_epochs(tmp_path):
    task = RegressionTask(config())
    lines = []
    loop = TrainingLoop(task, tmp_path / "work", progress=False, say=lines.append)
    assert loop.iters_per_epoch == 3 and not loop.settings.by_epoch
    loop.run()
    assert loop.iteration == 7
    # checkpoints every 2 iterations and at the end, the two newest numbered ones kept
    names = sorted(p.name for p in (tmp_path / "work").glob("*.pth"))
    assert names == ["best.pth", "iter_6.pth", "iter_7.pth", "latest.pth"]
    latest = read_checkpoint(tmp_path / "work" / "latest.pth")
    assert latest["meta"]["iter"] == 7 and latest["meta"]["task"] == "regression"
    assert latest["meta"]["epoch"] == 2 and "best_fit" in latest["meta"]
    log = records(tmp_path / "work")
    assert [r["iter"] for r in log if r["event"] == "val"] == [3, 6, 7]  # every val_interval, and at the end
    assert [r["iters"] for r in log if r["event"] == "epoch"] == [3, 3, 1]  # 10 samples in batches of 4
    assert [r["iter"] for r in log if r["event"] == "train"] == list(range(1, 8))
    assert lines[0].startswith("iter 1/7 loss ") and "iter 7/7  val mse" in lines[-1]
    # the hook after a training epoch belongs to the epoch loop
    assert task.calls == ["check_config", "build_model"]


class NoLossTerm(RegressionTask):
    def losses(self, model, forward, batch, device, autocast):
        return {"mse": super().losses(model, forward, batch, device, autocast)["loss_mse"]}


def test_a_task_whose_losses_name_no_loss_term_is_told_so(tmp_path):
    loop = TrainingLoop(NoLossTerm(config()), tmp_path / "work", progress=False, say=lambda line: None)
    with pytest.raises(LateralError, match=r"no 'loss\*' entry to optimise, only \['mse'\]"):
        loop.run()


class Killed(Exception):
    pass


class KilledAtStep6(RegressionTask):
    def losses(self, model, forward, batch, device, autocast):
        self.calls.append("losses")
        if self.calls.count("losses") == 6:
            raise Killed  # as a SIGKILL would: latest.pth is iteration 4's, iteration 5 is lost
        return super().losses(model, forward, batch, device, autocast)


def test_a_run_resumed_mid_epoch_ends_bit_identical_to_a_straight_one(tmp_path):
    straight = TrainingLoop(RegressionTask(config()), tmp_path / "straight", progress=False, say=lambda line: None)
    straight.run()
    with pytest.raises(Killed):
        TrainingLoop(KilledAtStep6(config()), tmp_path / "resumed", progress=False, say=lambda line: None).run()
    resumed = TrainingLoop(
        RegressionTask(config()), tmp_path / "resumed", resume="auto", progress=False, say=lambda line: None
    )
    assert (resumed.start_epoch, resumed.iteration) == (1, 4)  # one batch into the second epoch of 3 batches
    resumed.run()
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    steps = [r for r in records(tmp_path / "resumed") if r["event"] == "train"]
    assert [r["iter"] for r in steps] == [1, 2, 3, 4, 5, 5, 6, 7]  # 5 logged before the kill, and again
    assert [r["loss"] for r in steps[:4] + steps[5:]] == [
        r["loss"] for r in records(tmp_path / "straight") if r["event"] == "train"
    ]


def test_unreadable_samples_are_counted_and_the_epoch_loop_calls_the_task_hook(tmp_path):
    cfg = config()
    cfg["train_cfg"] = dict(max_epochs=2, val_interval=1)
    cfg["default_hooks"] = dict(logger=dict(interval=1))
    task = RegressionTask(cfg, broken=True)
    TrainingLoop(task, tmp_path / "work", progress=False, say=lambda line: None).run()
    epochs = [r for r in records(tmp_path / "work") if r["event"] == "epoch"]
    assert [r["failed_samples"] for r in epochs] == [1, 1] and "val_mse" in epochs[0]
    assert task.calls.count("after_train_epoch") == 2
    assert sorted(p.name for p in (tmp_path / "work").glob("*_*.pth")) == ["epoch_1.pth", "epoch_2.pth"]


@pytest.mark.parametrize(
    "train_cfg, hooks, message",
    [
        (
            dict(type="IterBasedTrainLoop", max_epochs=3),
            {},
            "an IterBasedTrainLoop counts in iterations: replace max_epochs with max_iters",
        ),
        (dict(type="EpochBasedTrainLoop", max_iters=3), {}, "replace max_iters with max_epochs"),
        (dict(type="IterLoop"), {}, "train_cfg.type must be one of"),
        (
            dict(max_iters=3),
            dict(checkpoint=dict(by_epoch=True)),
            "by_epoch=True does not fit train_cfg \\(iterations\\)",
        ),
    ],
)
def test_loop_settings_say_what_does_not_fit(train_cfg, hooks, message):
    with pytest.raises(ConfigError, match=message):
        LoopSettings.from_config(dict(train_cfg=train_cfg, default_hooks=hooks))


def test_epoch_sampler_splits_over_ranks_and_starts_part_way():
    ranks = [list(EpochSampler(10, True, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(share) == 4 for share in ranks) and set(sum(ranks, [])) == set(range(10))
    sampler = EpochSampler(10, True, seed=1)
    sampler.set_epoch(2)
    order = list(sampler)
    assert order != list(EpochSampler(10, True, seed=1)) and sorted(order) == list(range(10))
    sampler.skip(4)
    assert list(sampler) == order[4:] and list(sampler) == order  # the skip is for one pass only
