"""The restricted unpickler reads numpy pickles and refuses anything that would call other code."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from lateral.checkpoint import CheckpointError
from lateral.convert import convert_checkpoint
from lateral.convert.safe_pickle import UnsafePickleError, load_numpy_pickle


class _CreatesFile:
    """A pickle payload: unpickling it calls ``open(marker, 'w')``, creating the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _RunsShell:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [_CreatesFile, _RunsShell])
def test_malicious_pkl_is_refused_and_executes_nothing(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "SLOWFAST_8x8_R50.pkl"
    blobs = {"conv1_w": np.zeros((2, 3, 1, 7, 7), np.float32), "evil": payload(str(marker))}
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))

    with pytest.raises(
        UnsafePickleError, match="refused: it asks to call '(io.open|builtins.open|posix.system|os.system)'"
    ):
        load_numpy_pickle(path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="Nothing from the file was executed"):
        convert_checkpoint(path, "pyslowfast")
    assert not marker.exists()

    # the payload is real: an ordinary unpickler runs it
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_pickles_round_trip(tmp_path, protocol):
    blobs = OrderedDict(
        res2_0_branch2a_w=np.arange(24, dtype=np.float32).reshape(2, 3, 1, 2, 2),
        res2_0_branch2a_bn_riv=np.linspace(0.5, 1.0, 7).astype(np.float64),
        model_iter=np.int64(1000),
        strided=np.arange(20, dtype=np.float32)[::2],
    )
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs, "names": ["a", "b"], "nested": (1, 2.5, None)}, protocol=protocol))
    loaded = load_numpy_pickle(path)
    assert list(loaded["blobs"]) == list(blobs)
    for name, value in blobs.items():
        np.testing.assert_array_equal(loaded["blobs"][name], value)
        assert np.asarray(loaded["blobs"][name]).dtype == np.asarray(value).dtype
    assert loaded["names"] == ["a", "b"] and loaded["nested"] == (1, 2.5, None)


def test_other_numpy_and_torch_globals_are_refused(tmp_path):
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"w": np.array([object()], dtype=object)}}))
    with pytest.raises(UnsafePickleError, match="builtins.object"):
        load_numpy_pickle(path)
    path.write_bytes(pickle.dumps({"f": np.load}))
    with pytest.raises(UnsafePickleError, match="numpy"):
        load_numpy_pickle(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="not a readable Caffe2 pickle"):
        load_numpy_pickle(path)
