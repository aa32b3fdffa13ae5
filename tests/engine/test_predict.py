"""``lateral predict`` outputs: timelines that no other run overwrites, written under --out, plotting every leader."""

import json
import threading
from pathlib import Path

import pytest
import torch

from lateral.cli import main
from lateral.engine.predict import TimelineRow, write_timeline


def _two_folders_of_same_named_videos(root: Path, motion_data: Path) -> tuple[Path, Path]:
    """a/ and b/, each with clip.mp4 and other.mp4, different videos under the same names."""
    videos = sorted((motion_data / "videos").rglob("*.mp4"))[:4]
    folders = root / "a", root / "b"
    for folder, (clip, other) in zip(folders, (videos[:2], videos[2:])):
        folder.mkdir()
        (folder / "clip.mp4").write_bytes(clip.read_bytes())
        (folder / "other.mp4").write_bytes(other.read_bytes())
    return folders


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_and_leaves_the_first_runs_timelines(
    tmp_path, config_file, motion_data, capsys
):
    first, second = _two_folders_of_same_named_videos(tmp_path, motion_data)
    out = tmp_path / "timelines"
    command = ["predict", str(config_file), "none", "--window", "0.32s", "--out", str(out)]
    assert main(command[:3] + [str(first)] + command[3:]) == 0
    written = {path: path.read_bytes() for path in sorted(out.rglob("timeline.*"))}
    assert [p.relative_to(out).as_posix() for p in written] == [
        f"{name}_timeline/timeline.{kind}" for name in ("clip", "other") for kind in ("csv", "json", "png")
    ]
    capsys.readouterr()

    assert main(command[:3] + [str(second)] + command[3:]) == 1
    err = capsys.readouterr().err
    assert f"{out / 'clip_timeline'} already exists" in err and "--overwrite" in err
    assert {path: path.read_bytes() for path in sorted(out.rglob("timeline.*"))} == written  # nothing touched
    assert sorted(p.name for p in out.iterdir()) == ["clip_timeline", "other_timeline"]  # no half-claimed folders

    assert main(command[:3] + [str(second)] + command[3:] + ["--overwrite"]) == 0  # asked for: replaced
    assert json.loads((out / "clip_timeline" / "timeline.json").read_text())[0]["start_s"] == 0.0


def test_a_top_k_file_of_an_earlier_run_is_refused_without_overwrite(tmp_path, config_file, motion_data, capsys):
    video = sorted((motion_data / "videos").rglob("*test*.mp4"))[0]
    target = tmp_path / "top.json"
    target.write_text("an earlier run's results")
    assert main(["predict", str(config_file), "none", str(video), "--out", str(target)]) == 1
    assert "--overwrite" in capsys.readouterr().err and target.read_text() == "an earlier run's results"
    assert main(["predict", str(config_file), "none", str(video), "--out", str(target), "--overwrite"]) == 0
    assert len(json.loads(target.read_text())["top"]) == 5


def test_a_timeline_goes_to_a_named_predictions_folder_not_the_current_one(
    tmp_path, config_file, motion_data, monkeypatch, capsys
):
    video = sorted((motion_data / "videos").rglob("*test*.mp4"))[0]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["predict", str(config_file), "none", str(video), "--window", "0.32s"]) == 0
    assert [p.name for p in work.iterdir()] == ["lateral_predictions"]
    folder = Path("lateral_predictions") / f"{video.stem}_timeline"
    assert (work / folder / "timeline.json").is_file()
    stdout = capsys.readouterr().out
    assert "timelines go to lateral_predictions/" in stdout and f"{folder / 'timeline.csv'}" in stdout


def test_of_processes_claiming_one_output_folder_exactly_one_gets_it(tmp_path):
    from lateral.cli.recognition import claim_output_folder

    folder = tmp_path / "out" / "clip_timeline"
    results, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        try:
            results.append(claim_output_folder(folder, overwrite=False))
        except FileExistsError as err:
            results.append(str(err))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
    assert all("--overwrite" in r for r in results if r is not True)
    assert claim_output_folder(folder, overwrite=True) is False  # reused only when asked
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="not a folder"):
        claim_output_folder(tmp_path / "file", overwrite=True)


def test_write_timeline_refuses_existing_files_unless_asked(tmp_path):
    rows = [TimelineRow(0.0, 1.0, torch.tensor([0.7, 0.3]))]
    write_timeline(rows, ["a", "b"], tmp_path)
    before = (tmp_path / "timeline.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_timeline([TimelineRow(0.0, 1.0, torch.tensor([0.1, 0.9]))], ["a", "b"], tmp_path)
    assert (tmp_path / "timeline.json").read_text() == before
    write_timeline([TimelineRow(0.0, 1.0, torch.tensor([0.1, 0.9]))], ["a", "b"], tmp_path, overwrite=True)
    assert json.loads((tmp_path / "timeline.json").read_text())[0]["top"][0]["label"] == "b"


def _legend_of_timeline_plot(tmp_path, monkeypatch, probs: list[list[float]], topk: int) -> list[str]:
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    rows = [TimelineRow(float(i), float(i + 1), torch.tensor(p)) for i, p in enumerate(probs)]
    names = ["walk", "run", "jump", "wave"]
    write_timeline(rows, names, tmp_path, topk=topk)
    return [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()]


def test_the_timeline_plot_draws_every_class_that_leads_a_window(tmp_path, monkeypatch):
    probs = [
        [0.90, 0.08, 0.01, 0.01],  # walk, then run
        [0.05, 0.80, 0.10, 0.05],  # run, then jump
        [0.30, 0.05, 0.25, 0.40],
    ]  # wave leads here, though its peak is lower than walk's and run's
    assert sorted(_legend_of_timeline_plot(tmp_path / "top2", monkeypatch, probs, topk=2)) == [
        "jump",
        "run",
        "walk",
        "wave",
    ]
    assert _legend_of_timeline_plot(tmp_path / "top1", monkeypatch, probs, topk=1) == ["walk", "run", "wave"]
