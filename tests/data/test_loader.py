"""The DataLoader's workers: safe to start after this process decoded video, and never silent when stuck."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from data_helpers import TINY_CLIP_PIPELINE as PIPELINE
from data_helpers import numbered_frames

from lateral.data import build_dataloader, build_dataset, write_video
from lateral.data.loader import DataLoaderStalled, worker_start_methods
from lateral.data.pipeline import build_pipeline


@pytest.fixture
def two_videos(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        write_video(tmp_path / "videos" / name, numbered_frames(16))
    ann = tmp_path / "list.txt"
    ann.write_text("a.mp4 0\nb.mp4 1\n")
    return tmp_path, ann


def dataset_of(root, ann, pipeline=PIPELINE):
    return build_dataset(
        dict(type="VideoDataset", ann_file=str(ann), data_prefix=dict(video=str(root / "videos")), pipeline=pipeline)
    )


def convert_a_frame_as_user_code_does(path) -> None:
    """Leave PyAV's per-thread cached scaler, with its slice threads, in this process (as lateral's own writer and
    reader did): with PyAV 18.1.1 a worker forked after this blocked forever in its first frame conversion."""
    import av

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        frame.to_ndarray(format="rgb24")
        frame.reformat(width=64, height=64, format="rgb24", threads=0)


@pytest.mark.timeout(120)
def test_workers_start_after_this_process_decoded_video(two_videos):
    root, ann = two_videos
    convert_a_frame_as_user_code_does(root / "videos" / "a.mp4")
    batches = list(build_dataloader(dataset_of(root, ann), batch_size=1, num_workers=2))
    assert sorted(b["label"].item() for b in batches) == [0, 1]


@pytest.mark.timeout(120)
@pytest.mark.skipif("fork" not in worker_start_methods(), reason="no fork on this platform")
def test_forked_workers_do_not_use_the_inherited_scaler(two_videos):
    # the reader converts with a scaler of its own, so even workers forked from a process that left PyAV's cached
    # scaler behind (start_method='fork', the opt-in) decode
    root, ann = two_videos
    convert_a_frame_as_user_code_does(root / "videos" / "a.mp4")
    batches = list(build_dataloader(dataset_of(root, ann), batch_size=2, num_workers=1, start_method="fork"))
    assert batches[0]["label"].tolist() == [0, 1]
    assert batches[0]["inputs"].shape == (2, 1, 3, 4, 16, 16)


class SleepOn:
    """A pipeline that sleeps ``seconds`` on files whose name contains ``name``, then runs ``PIPELINE``
    (module level, so that workers started from the fork server can unpickle it)."""

    def __init__(self, name: str, seconds: float):
        self.name, self.seconds = name, seconds
        self.pipeline = build_pipeline(PIPELINE)

    def __call__(self, results):
        if self.name in results["filename"]:
            time.sleep(self.seconds)
        return self.pipeline(results)


class ExitOn(SleepOn):
    """A pipeline whose worker process dies on files whose name contains ``name``."""

    def __call__(self, results):
        if self.name in results["filename"]:
            os._exit(3)
        return self.pipeline(results)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_stalled_loader_names_the_worker_and_its_file(two_videos):
    root, ann = two_videos
    loader = build_dataloader(dataset_of(root, ann, SleepOn("b.mp4", 60)), batch_size=1, num_workers=1, timeout=4)
    batches = iter(loader)
    assert next(batches)["label"].tolist() == [0]
    started = time.monotonic()
    with pytest.raises(DataLoaderStalled, match=r"no batch for 4 s[\s\S]*worker 0 has been reading \S*b\.mp4 for"):
        next(batches)
    assert time.monotonic() - started < 30


@pytest.mark.timeout(120)
def test_a_dead_worker_is_reported_within_seconds(two_videos):
    # workers started from the fork server send this process no SIGCHLD: their death is seen by polling
    root, ann = two_videos
    loader = build_dataloader(dataset_of(root, ann, ExitOn("b.mp4", 0)), batch_size=1, num_workers=1, timeout=600)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        list(loader)
    assert time.monotonic() - started < 60


def test_a_negative_timeout_or_unknown_start_method_is_refused(two_videos):
    root, ann = two_videos
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        build_dataloader(dataset_of(root, ann), batch_size=1, num_workers=1, timeout=-1)
    with pytest.raises(ValueError, match="'threads' is not available here; expected one of"):
        build_dataloader(dataset_of(root, ann), batch_size=1, num_workers=1, start_method="threads")
    assert np.isin(["forkserver", "spawn"], worker_start_methods()).any()


def test_dataloader_config_takes_timeout_and_start_method(two_videos):
    from lateral.config import ConfigError
    from lateral.engine.train import build_loader

    root, ann = two_videos
    dataset_cfg = dict(
        type="VideoDataset", ann_file=str(ann), data_prefix=dict(video=str(root / "videos")), pipeline=PIPELINE
    )
    loader = build_loader(
        dict(dataset=dataset_cfg, num_workers=1, timeout=7, multiprocessing_context="spawn"),
        train=False,
        seed=0,
        distributed=False,
        name="val_dataloader",
    )
    assert loader.stall_timeout == 7.0 and loader.multiprocessing_context.get_start_method() == "spawn"
    with pytest.raises(ConfigError, match=r"val_dataloader.timeout must be a number of seconds >= 0"):
        build_loader(
            dict(dataset=dataset_cfg, timeout="1m"), train=False, seed=0, distributed=False, name="val_dataloader"
        )
    with pytest.raises(ConfigError, match=r"val_dataloader.multiprocessing_context must be one of"):
        build_loader(
            dict(dataset=dataset_cfg, multiprocessing_context="thread"),
            train=False,
            seed=0,
            distributed=False,
            name="val_dataloader",
        )
