"""Fixtures of the data tests: tiny videos written on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import numbered_frames

from lateral.data import write_video


@pytest.fixture
def make_video(tmp_path):
    """``make_video(name, num_frames, **write_kwargs) -> path`` of a numbered video in a temporary folder."""

    def make(name: str = "clip.mp4", num_frames: int = 24, height: int = 32, width: int = 48, **kwargs) -> Path:
        return write_video(tmp_path / name, numbered_frames(num_frames, height, width), **kwargs)

    return make
