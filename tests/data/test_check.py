"""``lateral data check``: exit code and the report of bad videos."""

from __future__ import annotations

from data_helpers import blocky_noise, numbered_frames

from lateral.cli import main
from lateral.data import write_video


def _dataset(tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "good.mp4", numbered_frames(20))
    write_video(videos / "short clip.webm", numbered_frames(4))
    good = (videos / "good.mp4").read_bytes()
    (videos / "cut.mp4").write_bytes(good[: len(good) // 2])
    (videos / "notes.avi").write_text("not a video")
    return videos


def test_check_reports_bad_videos_and_fails(tmp_path, capsys):
    videos = _dataset(tmp_path)
    ann = tmp_path / "list.txt"
    ann.write_text("good.mp4 0\nshort clip.webm 1\ncut.mp4 1\nnotes.avi 0\ngone.mp4 2\n")
    code = main(["data", "check", str(ann), "--data-prefix", str(videos), "--min-frames", "8"])
    out = capsys.readouterr().out
    assert code == 1
    bad_lines = [line for line in out.splitlines() if line.startswith("BAD")]
    assert len(bad_lines) == 4
    assert any("short clip.webm: too short: 4 frames, need at least 8" in line for line in bad_lines)
    assert any("cut.mp4: cannot open" in line for line in bad_lines)
    assert any("notes.avi: cannot open" in line for line in bad_lines)
    assert any("gone.mp4: file not found" in line for line in bad_lines)
    assert "checked 5: 1 ok, 4 bad (3 unreadable, 1 too short)" in out


def test_check_of_a_clean_folder_passes(tmp_path, capsys):
    videos = tmp_path / "clean"
    write_video(videos / "a" / "one.mp4", numbered_frames(12))
    write_video(videos / "b" / "two.avi", numbered_frames(16))
    code = main(["data", "check", str(videos), "--full"])
    out = capsys.readouterr().out
    assert code == 0
    assert "checked 2: 2 ok, 0 bad" in out and "frames per video 12-16" in out


def test_check_of_a_missing_source_is_an_error(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nothing.txt")]) == 1
    assert "neither a folder nor a list file" in capsys.readouterr().err


def test_check_of_a_rawframe_list(tmp_path, capsys):
    from PIL import Image

    frames = numbered_frames(3, 8, 8)
    for name, count in (("full", 3), ("partial", 2)):
        folder = tmp_path / "frames" / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(frames[i]).save(folder / f"img_{i + 1:05}.jpg")
    ann = tmp_path / "rawframes.txt"
    ann.write_text("full 3 0\npartial 3 1\n")
    code = main(["data", "check", str(ann), "--data-prefix", str(tmp_path / "frames")])
    out = capsys.readouterr().out
    assert code == 1
    assert "partial: frame file img_00003.jpg not found" in out and "checked 2: 1 ok, 1 bad" in out


def test_check_takes_one_video_and_refuses_configs_and_binary_files(tmp_path, capsys):
    videos = _dataset(tmp_path)
    assert main(["data", "check", str(videos / "good.mp4")]) == 0
    assert "checked 1: 1 ok" in capsys.readouterr().out
    (tmp_path / "cfg.py").write_text("model = dict()\n")
    assert main(["data", "check", str(tmp_path / "cfg.py")]) == 1
    assert "lateral data check: error: " in capsys.readouterr().err
    (tmp_path / "blob.bin").write_bytes(bytes(range(128, 256)))
    assert main(["data", "check", str(tmp_path / "blob.bin")]) == 1
    assert "is not a text list file" in capsys.readouterr().err


def test_check_reports_labels_that_are_not_numbers_or_out_of_range(tmp_path, capsys):
    videos = _dataset(tmp_path)
    ann = tmp_path / "list.txt"
    ann.write_text("good.mp4 0\ngood.mp4 notanint\ngood.mp4 99\ngood.mp4 7\n")
    code = main(["data", "check", str(ann), "--data-prefix", str(videos), "--num-classes", "8"])
    out = capsys.readouterr().out
    assert code == 1
    assert "good.mp4: label 'notanint' is not a whole number" in out
    assert "good.mp4: label 99 is out of range (0..7)" in out
    assert "checked 4: 2 ok, 2 bad (0 unreadable, 0 too short, 2 with a bad label)" in out
    assert main(["data", "check", str(ann), "--data-prefix", str(videos)]) == 1  # without --num-classes: one bad
    assert "checked 4: 3 ok, 1 bad" in capsys.readouterr().out


def test_full_check_reports_damage_inside_a_stream(tmp_path, capsys):
    """Zeroed bytes in the middle of an H.264 file decode to wrong pixels without an exception; --full says so."""
    frames = blocky_noise(40, seed=5)
    path = write_video(tmp_path / "clip.mp4", frames, codec="libx264", gop_size=10)
    assert main(["data", "check", str(path), "--full"]) == 0
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 100] = bytes(100)  # here the decoder conceals the damage and logs errors
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["data", "check", str(damaged), "--full"]) == 1
    assert "the decoder reported" in capsys.readouterr().out


def _still_images(folder):
    """A PNG and a JPEG picture renamed to .mp4 (FFmpeg opens them as one-frame png_pipe / jpeg_pipe streams)."""
    from PIL import Image

    picture = Image.fromarray(numbered_frames(1)[0])
    picture.save(folder / "still.mp4", format="PNG")
    picture.save(folder / "photo.mp4", format="JPEG")


def test_check_says_a_folder_named_like_a_video_is_a_directory_and_an_image_is_not_a_video(tmp_path, capsys):
    videos = _dataset(tmp_path)
    (videos / "folder.mp4").mkdir()
    _still_images(videos)
    ann = tmp_path / "list.txt"
    ann.write_text("good.mp4 0\nfolder.mp4 1\nstill.mp4 2\nphoto.mp4 3\n")
    code = main(["data", "check", str(ann), "--data-prefix", str(videos)])
    out = capsys.readouterr().out
    assert code == 1
    assert "folder.mp4: is a directory" in out
    assert "still.mp4: an image, not a video" in out and "photo.mp4: an image, not a video" in out
    assert "checked 4: 1 ok, 3 bad (3 unreadable, 0 too short)" in out
    assert main(["data", "check", str(videos / "still.mp4")]) == 1  # a single file, too
    assert "an image, not a video" in capsys.readouterr().out
