"""Tests for keras_sft._model_files: `SFTModel.save` and `save_weights`
write whole files or leave the previous one, and a damaged file is named."""

import collections
import errno
import os
import re
import shutil
import subprocess
import sys

import h5py
import keras
import pytest

import keras_sft
from tests import helpers

_Usage = collections.namedtuple("_Usage", ["total", "used", "free"])
_SAVES = [("save", "sft.keras"), ("save_weights", "sft.weights.h5")]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(seed=0):
    return keras_sft.SFTModel(helpers.mlp(seed=seed), lambda_=0.5)


def _write_half_then(error, method):
    """A `keras.Model.<method>` that writes half of what it would, then
    raises `error`, as a disk filling up in the middle does."""
    write = getattr(keras.Model, method)

    def half(self, filepath, *args, **kwargs):
        write(self, filepath, *args, **kwargs)
        helpers.truncate_half(filepath)
        raise error

    return half


@pytest.mark.parametrize(("method", "name"), _SAVES)
def test_full_disk_midway_keeps_the_previous_file(
    method, name, tmp_path, monkeypatch
):
    path = str(tmp_path / name)
    getattr(_model(seed=0), method)(path)
    with open(path, "rb") as file:
        before = file.read()
    other = _model(seed=1)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(keras.Model, method, _write_half_then(full, method))

    with pytest.raises(OSError) as info:
        getattr(other, method)(path)

    assert info.value.errno == errno.ENOSPC
    message = info.value.strerror
    assert message.startswith(f"Cannot write {path!r}: No space left on")
    assert f"bytes free in {str(tmp_path)!r}" in message
    assert "Free some space or write to another disk" in message
    assert "\n" not in message
    assert os.listdir(tmp_path) == [name]
    with open(path, "rb") as file:
        assert file.read() == before


@pytest.mark.parametrize(("method", "name"), _SAVES)
def test_fault_without_a_previous_file_leaves_nothing(
    method, name, tmp_path, monkeypatch
):
    model = _model()
    monkeypatch.setattr(
        keras.Model, method, _write_half_then(KeyboardInterrupt(), method)
    )

    with pytest.raises(KeyboardInterrupt):
        getattr(model, method)(str(tmp_path / name))

    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("method", "name"), _SAVES)
def test_file_that_cannot_fit_is_refused_before_writing(
    method, name, tmp_path, monkeypatch
):
    def little_space(path):
        return _Usage(total=10**9, used=10**9 - 1000, free=1000)

    model = _model()
    monkeypatch.setattr(shutil, "disk_usage", little_space)
    path = str(tmp_path / name)

    with pytest.raises(OSError) as info:
        getattr(model, method)(path)

    assert info.value.errno == errno.ENOSPC
    assert re.fullmatch(
        rf"Cannot write '{path}': No space left on device \(1000 bytes free "
        rf"in '{tmp_path}', about \d+ needed\)\. Free some space or write to "
        r"another disk; the file is as it was before \(the previous "
        r"version, or none\)\.",
        info.value.strerror,
    )
    assert os.listdir(tmp_path) == []


def test_weights_are_made_in_memory_then_written(tmp_path, monkeypatch):
    opened = []
    open_h5 = h5py.File

    def recording(name, *args, **kwargs):
        opened.append(name)
        return open_h5(name, *args, **kwargs)

    model = _model()
    path = str(tmp_path / "sft.weights.h5")
    monkeypatch.setattr(h5py, "File", recording)
    model.save_weights(path)
    monkeypatch.undo()

    # HDF5 never wrote onto the disk, where a full disk makes it crash.
    assert len(opened) == 1
    assert not isinstance(opened[0], (str, os.PathLike))
    loaded = _model(seed=1)
    loaded.load_weights(path)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        assert (a == b).all()


# A size limit makes the kernel refuse a write past it (EFBIG), as a disk
# filling up midway refuses it (ENOSPC): a real fault of the write, after
# the check of the space free passed, without a full disk.
_WRITE_PAST_A_LIMIT = """
import os, resource, signal, sys
import keras_sft
from tests import helpers

path = sys.argv[1]
keras_sft.SFTModel(helpers.mlp(seed=0)).save_weights(path)
other = keras_sft.SFTModel(helpers.mlp(seed=1))
limit = os.path.getsize(path) // 2
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    other.save_weights(path)
except OSError as error:
    print(error.errno, error.strerror)
"""


def test_write_failing_midway_is_one_error_and_keeps_the_file(tmp_path):
    path = str(tmp_path / "sft.weights.h5")
    result = subprocess.run(
        [sys.executable, "-c", _WRITE_PAST_A_LIMIT, path],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Not a segmentation fault (-11) after pages of HDF5 errors.
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == (
        f"{errno.EFBIG} Cannot write {path!r}: File too large\n"
    )
    assert "HDF5" not in result.stderr
    assert os.listdir(tmp_path) == ["sft.weights.h5"]
    loaded = _model()
    loaded.load_weights(path)
    for a, b in zip(
        loaded.get_weights(), _model(seed=0).get_weights(), strict=True
    ):
        assert (a == b).all()


@pytest.mark.parametrize(("method", "name"), _SAVES)
def test_saves_load_back_with_the_mode_of_the_umask(method, name, tmp_path):
    model = _model()
    path = str(tmp_path / name)
    previous = os.umask(0o027)
    try:
        getattr(model, method)(path)
    finally:
        os.umask(previous)

    assert os.stat(path).st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == [name]
    if method == "save":
        loaded = keras.models.load_model(path)
    else:
        loaded = _model()
        loaded.load_weights(path)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        assert (a == b).all()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("sft.keras", r"not a valid \.keras file \(truncated or not a zip"),
        ("sft.weights.h5", r"not a valid HDF5 file \(.*truncated file"),
        ("empty.weights.h5", r"not a valid HDF5 file \(.*signature not found"),
    ],
)
def test_load_weights_names_a_damaged_file(name, reason, tmp_path):
    model = _model()
    path = str(tmp_path / name)
    if name.startswith("empty"):
        open(path, "wb").close()
    else:
        (model.save if name.endswith(".keras") else model.save_weights)(path)
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)

    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `filepath`\. Expected a whole "
        r"`\.weights\.h5` or `\.keras` file \(write it again with "
        r"`save_weights` or `save`, or load another one\)\. Received: "
        rf"filepath='{path}', {reason}",
    ):
        model.load_weights(path)


# Keras warns of the mismatch, then raises.
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_load_weights_keeps_keras_errors_of_whole_files(tmp_path):
    path = str(tmp_path / "other.weights.h5")
    other = keras_sft.SFTModel(helpers.mlp(hidden=5))
    other.save_weights(path)

    with pytest.raises(ValueError) as info:
        _model().load_weights(path)

    assert "Invalid value for argument `filepath`" not in str(info.value)


def test_legacy_hdf5_save_is_refused_naming_the_student(tmp_path):
    model = keras_sft.SFTModel(helpers.mlp())
    path = str(tmp_path / "sft.h5")
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `filepath`. Expected a `.keras` "
        r"file: the legacy HDF5 format cannot hold a student and its "
        r"teacher, whose layers share names \(the student alone: "
        r"`model.student.save\(filepath\)`\). Received: filepath='.*sft.h5'",
    ):
        model.save(path)
    assert os.listdir(tmp_path) == []
