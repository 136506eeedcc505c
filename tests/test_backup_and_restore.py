import errno
import json
import os
import shutil

import keras
import numpy as np
import pytest

import keras_sft
from tests import helpers


class _PreemptedError(Exception):
    pass


class _PreemptAfterEpoch(keras.callbacks.Callback):
    """Stops `fit` after epoch `epoch`'s end (and its backup)."""

    def __init__(self, epoch):
        super().__init__()
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self._epoch:
            raise _PreemptedError


def _model():
    keras.utils.set_random_seed(0)
    model = keras_sft.SFTModel(helpers.mlp(), lambda_=0.5)
    model.compile(optimizer="adam")
    return model


def _fit(model, backup, *extra, epochs=4):
    x, y, weights = helpers.classification_data(n=48)
    model.fit(
        x,
        y,
        sample_weight=weights,
        batch_size=16,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[backup, *extra],
    )
    return [w.numpy() for w in model.student.weights]


def _assert_resumed_as_uninterrupted(resumed, expected, model):
    """Bit equality: the resumed run replays the same steps. Under XLA
    the resumed run compiles its step anew, which may round differently."""
    for a, b in zip(resumed, expected, strict=True):
        if model.jit_compile:
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)


def _uninterrupted(tmp_path):
    backup = keras_sft.BackupAndRestore(str(tmp_path / "reference"))
    return _fit(_model(), backup)


def test_resumes_after_a_preemption_as_an_uninterrupted_run(tmp_path):
    expected = _uninterrupted(tmp_path)
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(_PreemptedError):
        _fit(
            _model(),
            keras_sft.BackupAndRestore(backup_dir),
            _PreemptAfterEpoch(1),
        )
    record = json.loads(
        (tmp_path / "backup" / "training_metadata.json").read_text()
    )
    assert record["epoch"] == 2
    # One weights file: the committed one.
    assert [p for p in os.listdir(backup_dir) if p.endswith(".h5")] == [
        record["weights"]
    ]
    model = _model()
    resumed = _fit(model, keras_sft.BackupAndRestore(backup_dir))
    _assert_resumed_as_uninterrupted(resumed, expected, model)
    assert not os.path.exists(backup_dir)


def test_interruption_during_the_write_leaves_the_previous_backup(
    tmp_path, monkeypatch
):
    expected = _uninterrupted(tmp_path)
    backup_dir = str(tmp_path / "backup")
    helpers.interrupt_third_weights_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _fit(_model(), keras_sft.BackupAndRestore(backup_dir))
    monkeypatch.undo()
    record = json.loads(
        (tmp_path / "backup" / "training_metadata.json").read_text()
    )
    assert record["epoch"] == 2
    model = _model()
    resumed = _fit(model, keras_sft.BackupAndRestore(backup_dir))
    _assert_resumed_as_uninterrupted(resumed, expected, model)


def test_full_disk_is_one_clear_error_and_keeps_the_previous_backup(
    tmp_path, monkeypatch
):
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(_PreemptedError):
        _fit(
            _model(),
            keras_sft.BackupAndRestore(backup_dir, delete_checkpoint=False),
            _PreemptAfterEpoch(0),
        )
    before = sorted(os.listdir(backup_dir))

    def no_space(path):
        usage = os.statvfs(path)
        return type("Usage", (), {"free": 1000, "total": usage.f_blocks})

    monkeypatch.setattr(shutil, "disk_usage", no_space)
    with pytest.raises(OSError, match=r"Could not write the backup") as info:
        _fit(_model(), keras_sft.BackupAndRestore(backup_dir), epochs=3)
    assert info.value.errno == errno.ENOSPC
    assert "the previous backup is intact" in str(info.value)
    assert sorted(os.listdir(backup_dir)) == before


def test_write_error_removes_the_partial_file(tmp_path, monkeypatch):
    backup_dir = str(tmp_path / "backup")

    def failing(self, filepath, *args, **kwargs):
        # The in-memory file `save_weights` has Keras write first.
        filepath.write(b"\x89HDF")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", failing)
    with pytest.raises(OSError, match=r"No space left on device"):
        _fit(_model(), keras_sft.BackupAndRestore(backup_dir), epochs=1)
    assert os.listdir(backup_dir) == []


def test_damaged_weights_file_is_named_with_what_to_do(tmp_path):
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(_PreemptedError):
        _fit(
            _model(),
            keras_sft.BackupAndRestore(backup_dir),
            _PreemptAfterEpoch(0),
        )
    record = json.loads(
        (tmp_path / "backup" / "training_metadata.json").read_text()
    )
    weights = os.path.join(backup_dir, record["weights"])
    open(weights, "wb").close()  # 0 bytes
    with pytest.raises(
        ValueError,
        match=rf"The backup weights '{weights}' cannot be read .*Delete "
        rf"'{backup_dir}' to start over",
    ):
        _fit(_model(), keras_sft.BackupAndRestore(backup_dir))


def test_double_checkpoint_falls_back_to_the_previous_weights(tmp_path):
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(_PreemptedError):
        _fit(
            _model(),
            keras_sft.BackupAndRestore(backup_dir, double_checkpoint=True),
            _PreemptAfterEpoch(1),
        )
    record = json.loads(
        (tmp_path / "backup" / "training_metadata.json").read_text()
    )
    assert sorted(p for p in os.listdir(backup_dir) if p.endswith(".h5")) == (
        sorted([record["weights"], record["previous"]["weights"]])
    )
    open(os.path.join(backup_dir, record["weights"]), "wb").close()
    model = _model()
    _fit(
        model,
        keras_sft.BackupAndRestore(backup_dir, double_checkpoint=True),
        epochs=2,
    )
    # Resumed after epoch 1 (the previous backup), so one epoch ran.
    assert int(model.optimizer.iterations.numpy()) == 6


def test_record_of_another_program_is_refused(tmp_path):
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    (backup_dir / "training_metadata.json").write_text('{"epoch": 1}')
    with pytest.raises(
        ValueError,
        match=r"The backup record .* was not written by "
        r"keras_sft.BackupAndRestore .*Delete .* to start over",
    ):
        _fit(_model(), keras_sft.BackupAndRestore(str(backup_dir)))


def test_batch_backups_are_committed_every_save_freq_batches(tmp_path):
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(_PreemptedError):
        _fit(
            _model(),
            keras_sft.BackupAndRestore(backup_dir, save_freq=2),
            _PreemptAfterEpoch(0),
        )
    record = json.loads(
        (tmp_path / "backup" / "training_metadata.json").read_text()
    )
    assert (record["epoch"], record["batch"]) == (0, 1)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"backup_dir": ""},
            r"Invalid value for argument `backup_dir`. Expected a non-empty "
            r"path. Received: backup_dir=''",
        ),
        (
            {"backup_dir": "b", "save_freq": 0},
            r"Invalid value for argument `save_freq`. Expected an int > 0. "
            r"Received: save_freq=0",
        ),
        (
            {"backup_dir": "b", "save_freq": "batch"},
            r"Invalid value for argument `save_freq`. Expected an int > 0. "
            r"Received: save_freq='batch'",
        ),
        (
            {"backup_dir": "b", "double_checkpoint": 1},
            r"Invalid value for argument `double_checkpoint`. Expected a "
            r"bool. Received: double_checkpoint=1",
        ),
    ],
)
def test_invalid_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        keras_sft.BackupAndRestore(**arguments)


def test_files_of_a_killed_backup_are_removed_on_resuming(tmp_path):
    expected = _uninterrupted(tmp_path)
    backup_dir = tmp_path / "backup"
    with pytest.raises(_PreemptedError):
        _fit(
            _model(),
            keras_sft.BackupAndRestore(str(backup_dir)),
            _PreemptAfterEpoch(1),
        )
    committed = sorted(os.listdir(backup_dir))
    # What a SIGKILL during the third backup leaves: the temporary file of
    # its weights (named as `keras_sft` names them), or its weights file
    # and the temporary record; beside files of the user's.
    staging = "epoch-3-batch-2.weights.h5"
    ours = [
        f".{staging}.tmp-{'0123456789abcdef' * 2}.weights.h5",
        staging,
        "training_metadata.json.tmp",
    ]
    users = [".notes.tmp-1", f".{staging}.tmp-mine", "notes.txt"]
    for name in ours + users:
        (backup_dir / name).write_bytes(b"\x89HDF partial")
    with pytest.raises(_PreemptedError):
        _fit(
            _model(),
            keras_sft.BackupAndRestore(str(backup_dir)),
            _PreemptAtTrainBegin(),
        )
    assert sorted(os.listdir(backup_dir)) == sorted(committed + users)
    model = _model()
    resumed = _fit(model, keras_sft.BackupAndRestore(str(backup_dir)))
    _assert_resumed_as_uninterrupted(resumed, expected, model)


class _PreemptAtTrainBegin(keras.callbacks.Callback):
    """Stops `fit` once the callbacks before it began training."""

    def on_train_begin(self, logs=None):
        raise _PreemptedError
