"""Decoding real files written on the fly: exact counts, right frames, seeking, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import MEDIA, blocky_noise, frame_numbers, numbered_frames

from lateral.data import DecodeError, PyAVReader, build_pipeline, probe_video, write_video


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "clip.avi", "clip.mkv"])
def test_exact_frame_count_and_frames(make_video, name):
    path = make_video(name, num_frames=40)
    with PyAVReader(path, num_threads=1) as reader:
        assert reader.num_frames == 40
        assert reader.fps == pytest.approx(25.0)
        indices = [0, 1, 7, 20, 39, 3, 3]
        frames = reader.get_frames(indices)
    assert frames.shape == (7, 32, 48, 3) and frames.dtype == np.uint8
    assert frame_numbers(frames).tolist() == indices


def test_header_count_may_be_missing_but_counting_is_exact(make_video):
    path = make_video("clip.webm", num_frames=30)
    assert probe_video(path).num_frames == 0  # webm headers carry no frame count
    info = probe_video(path, count_frames=True)
    assert (info.num_frames, info.width, info.height, info.exact) == (30, 48, 32, True)
    assert info.duration == pytest.approx(1.2, abs=0.05)


def test_seek_gives_the_same_frames_as_a_full_decode_and_decodes_less(tmp_path):
    # B-frames and a keyframe every 16 frames: the wanted clip sits far from the start
    frames = blocky_noise(96, seed=0)
    path = write_video(tmp_path / "gop.mp4", frames, gop_size=16, bframes=2)
    with PyAVReader(path, num_threads=1) as reader:
        full = reader.decode_all()
        assert len(full) == 96
        reader.frames_decoded = 0
        wanted = np.arange(70, 86, 2)
        clip = reader.get_frames(wanted)
        np.testing.assert_array_equal(clip, full[wanted])
        assert reader.frames_decoded < 30  # from the keyframe at 64, not from frame 0
        # two clips far apart: the reader re-seeks between them
        reader.frames_decoded = 0
        wanted = np.concatenate([np.arange(2, 10), np.arange(80, 88)])
        np.testing.assert_array_equal(reader.get_frames(wanted), full[wanted])
        assert reader.frames_decoded < 50


@pytest.mark.timeout(60)
def test_a_seek_that_lands_before_the_keyframe_asked_for_decodes_forward(tmp_path, monkeypatch):
    """Some containers cannot seek to every keyframe the packets flag (a variable-frame-rate MP4 seeks to frame 0
    for its second keyframe): the reader then decodes forward from where it landed instead of seeking again and
    again."""
    import av

    frames = blocky_noise(64, seed=1)
    path = write_video(tmp_path / "gop.mp4", frames, gop_size=16, bframes=2)
    with PyAVReader(path, num_threads=1) as reader:
        full = reader.decode_all()
    seek = av.container.InputContainer.seek
    monkeypatch.setattr(
        av.container.InputContainer, "seek", lambda self, offset, **kwargs: seek(self, 0, **kwargs)
    )  # every seek lands at frame 0
    with PyAVReader(path, num_threads=1) as reader:
        for wanted in (np.array([60]), np.arange(40, 56, 3), np.array([50, 5, 33, 63])):
            np.testing.assert_array_equal(reader.get_frames(wanted), full[wanted])


@pytest.mark.skipif(not (MEDIA / "bikes.mp4").is_file(), reason="shared media not present")
def test_seek_matches_full_decode_on_a_real_h264_file():
    with PyAVReader(MEDIA / "bikes.mp4", num_threads=1) as reader:
        assert reader.num_frames == 250
        wanted = np.arange(180, 244, 2)
        clip = reader.get_frames(wanted)
        decoded_for_clip = reader.frames_decoded
        full = reader.decode_all()
    np.testing.assert_array_equal(clip, full[wanted])
    assert decoded_for_clip < 150


def test_decode_steps_of_all_three_mmaction2_names(make_video):
    path = make_video("clip.mp4", num_frames=24)
    for init, decode in (("DecordInit", "DecordDecode"), ("PyAVInit", "PyAVDecode"), ("OpenCVInit", "OpenCVDecode")):
        pipeline = build_pipeline(
            [
                dict(type=init),
                dict(type="SampleFrames", clip_len=4, frame_interval=3, num_clips=2, test_mode=True),
                dict(type=decode),
            ]
        )
        results = pipeline(dict(filename=str(path), start_index=0))
        assert results["total_frames"] == 24
        assert "video_reader" not in results
        assert results["imgs"].shape == (8, 32, 48, 3)
        assert frame_numbers(results["imgs"]).tolist() == results["frame_inds"].tolist()
        assert results["original_shape"] == results["img_shape"] == (32, 48)


def test_out_of_range_index_is_a_decode_error(make_video):
    with PyAVReader(make_video(num_frames=10)) as reader:
        with pytest.raises(DecodeError, match="out of range: the video has 10 frames"):
            reader.get_frames([3, 10])


def _bad_files(tmp_path, make_video):
    good = make_video("good.mp4", num_frames=24).read_bytes()
    files = {
        "empty.mp4": (b"", "empty file"),
        "truncated.mp4": (good[: len(good) // 2], "cannot open"),
        "text.mp4": (b"this is not a video\n" * 50, "cannot open"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    return {tmp_path / name: reason for name, (_, reason) in files.items()}


def test_bad_files_raise_decode_errors_with_reasons(tmp_path, make_video):
    for path, reason in _bad_files(tmp_path, make_video).items():
        with pytest.raises(DecodeError, match=reason) as info:
            PyAVReader(path)
        assert info.value.path == str(path)
    with pytest.raises(DecodeError, match="file not found"):
        PyAVReader(tmp_path / "missing.mp4")


def test_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "audio.mka"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(DecodeError, match="no video stream"):
        PyAVReader(path)


def test_truncated_webm_keeps_the_frames_before_the_damage(tmp_path):
    frames = numbered_frames(40)
    data = write_video(tmp_path / "full.webm", frames).read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with PyAVReader(cut, num_threads=1) as reader:
        assert 0 < reader.num_frames < 40  # counted from what is there, not from any header
        first = reader.get_frames([0, 1])
    assert frame_numbers(first).tolist() == [0, 1]


def test_one_init_serves_several_decodes(make_video):
    # sliding-window prediction opens a video once and decodes many windows from copies of the results
    path = make_video("clip.mp4", num_frames=30)
    init = build_pipeline([dict(type="PyAVInit")])
    rest = build_pipeline(
        [dict(type="SampleFrames", clip_len=3, frame_interval=2, test_mode=True), dict(type="PyAVDecode")]
    )
    base = init(dict(filename=str(path), start_index=0))
    for start in (0, 10, 20):
        results = rest(dict(base, total_frames=10, start_index=start))
        assert frame_numbers(results["imgs"]).tolist() == [start + 2, start + 4, start + 6]


def test_a_missing_relative_path_names_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DecodeError, match=f"missing.mp4: file not found \\(looked for {tmp_path / 'missing.mp4'}\\)"):
        PyAVReader("missing.mp4")


def _write_with_pyav(
    path, frames, codec: str, container_format: str | None = None, gop_size: int = 6, bframes: int = 0
) -> None:
    import av

    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = gop_size
        stream.codec_context.max_b_frames = bframes
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.timeout(120)
def test_h264_with_b_frames_in_avi_gives_frames_in_display_order(tmp_path):
    """AVI stamps H.264 packets in decode order (pts = dts + 1): those stamps cannot number displayed frames."""
    path = write_video(tmp_path / "b.avi", numbered_frames(30, 32, 32, step=8), codec="libx264", gop_size=6, bframes=2)
    with PyAVReader(path, num_threads=1) as reader:
        full = reader.decode_all()
    np.testing.assert_allclose(full[:, 0, 0, 0], 8 * np.arange(30), atol=3)  # the decoder's own order is right
    for wanted in ([1], [3], [4], [9, 10], list(range(30))):
        with PyAVReader(path, num_threads=1) as reader:
            np.testing.assert_array_equal(reader.get_frames(wanted), full[wanted])


@pytest.mark.timeout(120)
def test_mpeg_ts_frames_after_the_last_keyframe_decode(tmp_path):
    """An MPEG-TS seek lands past the keyframe asked for; the frames of the last GOP must still come out."""
    path = tmp_path / "clip.ts"
    _write_with_pyav(path, numbered_frames(30, 32, 32, step=8), "libx264", "mpegts")
    with PyAVReader(path, num_threads=1) as reader:
        full = reader.decode_all()
        assert reader.num_frames == len(full) == 30
    for wanted in ([28], [29], [5, 29], [12, 13, 27]):
        with PyAVReader(path, num_threads=1) as reader:
            np.testing.assert_array_equal(reader.get_frames(wanted), full[wanted])


def test_a_damaged_last_packet_of_a_truncated_avi_is_left_out(tmp_path):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, size=(20, 32, 32, 3), dtype=np.uint8)
    path = write_video(tmp_path / "src.avi", frames, codec="mpeg4", gop_size=5)
    with PyAVReader(path, num_threads=1) as reader:
        source = reader.decode_all()
    cut = tmp_path / "cut.avi"
    data = path.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.97)])
    with PyAVReader(cut, num_threads=1) as reader:
        assert reader.num_frames < len(source)
        got = reader.get_frames(list(range(reader.num_frames)))
    assert np.array_equal(got, source[: len(got)])  # no frame decoded from a partly read packet


@pytest.mark.timeout(120)
def test_a_resolution_change_midway_scales_to_the_first_size(tmp_path):
    first, second = tmp_path / "a.mpg", tmp_path / "b.mpg"
    _write_with_pyav(first, numbered_frames(12, 64, 64, step=8), "mpeg1video", "mpeg")
    _write_with_pyav(second, np.full((12, 48, 80, 3), 200, np.uint8), "mpeg1video", "mpeg")
    joined = tmp_path / "joined.mpg"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    with PyAVReader(joined, num_threads=1) as reader:
        assert reader.num_frames >= 20
        frames = reader.get_frames([0, 16])  # one frame of each part
    assert frames.shape == (2, 64, 64, 3)
    assert frames[1].mean() > 150  # the second part's frame, scaled to 64x64


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.6])
def test_a_truncated_mkv_with_b_frames_hands_out_no_frame_under_another_number(tmp_path, keep):
    """Cut inside a group of frames, the file holds reference frames without the B-frames shown before them; those
    frames must not be numbered as if they followed on."""
    frames = blocky_noise(40, seed=4)
    path = write_video(tmp_path / "src.mkv", frames, gop_size=10, bframes=2)
    with PyAVReader(path, num_threads=1) as reader:
        source = reader.decode_all()
    cut = tmp_path / "cut.mkv"
    data = path.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep)])
    try:
        reader = PyAVReader(cut, num_threads=1)
    except DecodeError:
        return  # nothing readable is fine too: refused, not wrong
    with reader:
        assert 0 < reader.num_frames < len(source)
        got = reader.get_frames(list(range(reader.num_frames)))
    for index in range(len(got)):
        np.testing.assert_array_equal(got[index], source[index], err_msg=f"frame {index} of {len(got)}")


@pytest.mark.timeout(120)
def test_mpeg_program_stream_with_b_frames_numbers_frames_as_shown():
    """After a seek, an MPEG program stream stamps packets one frame off with B-frames: numbered by counting."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mpg"
        _write_with_pyav(path, numbered_frames(30, 64, 64, step=8), "mpeg1video", "mpeg", gop_size=5, bframes=1)
        with PyAVReader(path, num_threads=1) as reader:
            full = reader.decode_all()
        np.testing.assert_allclose(full[:, 0, 0, 0], 8 * np.arange(30), atol=4)
        for wanted in ([24], [25], [12, 29], list(range(30))):
            with PyAVReader(path, num_threads=1) as reader:
                np.testing.assert_array_equal(reader.get_frames(wanted), full[wanted])


@pytest.mark.parametrize("keep", [0.45, 0.6, 0.75])
def test_a_truncated_avi_with_b_frames_hands_out_no_frame_under_another_number(tmp_path, keep):
    path = tmp_path / "src.avi"
    _write_with_pyav(path, blocky_noise(60, size=64, seed=6), "mpeg4", "avi", gop_size=5, bframes=1)
    with PyAVReader(path, num_threads=1) as reader:
        source = reader.decode_all()
    cut = tmp_path / "cut.avi"
    data = path.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep)])
    with PyAVReader(cut, num_threads=1) as reader:
        assert 0 < reader.num_frames < len(source)
        undecodable = []
        for index in range(reader.num_frames):
            try:
                frame = reader.get_frames([index])[0]
            except DecodeError:  # a B-frame whose later reference was cut off: refused, which a dataset counts
                undecodable.append(index)
                continue
            np.testing.assert_array_equal(frame, source[index], err_msg=f"frame {index}")
    assert all(index >= reader.num_frames - 3 for index in undecodable), undecodable
