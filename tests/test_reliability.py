"""Failure behaviour: preemption, bad input, numerical faults, determinism."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from examples import common_flags
from examples import finetune
from examples import pretrain
from examples.lib import classifiers
from examples.lib import saving
from examples.lib import training
from examples.lib.training_config import TrainingConfig
from keras_sft import data

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "train_split": "train[:32]",
    "test_split": "test[:16]",
    "batch_size": 8,
    "epochs": 1,
}


@pytest.fixture(autouse=True)
def _parsed_flags():
    """Lets tests read flags without parsing a command line."""
    if not FLAGS.is_parsed():
        FLAGS.mark_as_parsed()


def _save_classifier(path, *, input_shape=(8, 8, 1), num_classes=10):
    model = classifiers.build_classifier(
        "mlp", input_shape=input_shape, num_classes=num_classes
    )
    model.save(path)
    return str(path)


def _finetune(tmp_path, pretrained, **overrides):
    output = str(tmp_path / "finetuned.keras")
    flag_values = {
        **TINY,
        "pretrained": pretrained,
        "output": output,
        **overrides,
    }
    with flagsaver.flagsaver(**flag_values):
        finetune.main(["finetune"])
    return output


# Preemption.


class _PreemptedError(Exception):
    """Stands for the process being killed."""


class _PreemptAfter(keras.callbacks.Callback):
    """Raises at the end of an epoch, before the backup of that epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _PreemptedError


def _finetune_directly(tmp_path, name, pretrained, backup_dir, extra=()):
    """Four epochs of training.finetune on shuffled, shifted digits."""
    train, _ = data.load("digits", split="train[:48]")
    with flagsaver.flagsaver(seed=3, batch_size=8):
        batches, epoch_shuffle = common_flags.training_batches(
            data.shift_domain(train, "invert")
        )
    model = training.finetune(
        pretrained=pretrained,
        train=batches,
        validation=None,
        lambda_=0.1,
        output=str(tmp_path / f"{name}.keras"),
        strategy=tf.distribute.get_strategy(),
        config=TrainingConfig(
            epochs=4, seed=3, backup_dir=backup_dir, verbose=0
        ),
        callbacks=[epoch_shuffle, *extra],
    )
    return model.student.get_weights()


def test_interrupted_finetune_resumes_to_the_uninterrupted_weights(tmp_path):
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    expected = _finetune_directly(
        tmp_path, "uninterrupted", pretrained, str(tmp_path / "backup_a")
    )
    backup_dir = str(tmp_path / "backup_b")
    with pytest.raises(_PreemptedError):
        _finetune_directly(
            tmp_path, "interrupted", pretrained, backup_dir, [_PreemptAfter(2)]
        )
    with open(os.path.join(backup_dir, "training_metadata.json")) as file:
        assert json.load(file)["epoch"] == 2  # two epochs were backed up
    resumed = _finetune_directly(
        tmp_path, "interrupted", pretrained, backup_dir
    )
    for a, b in zip(resumed, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert not os.path.exists(backup_dir)  # removed after success


def _command(*arguments):
    return [sys.executable, "-m", "examples.finetune", *arguments]


def _run(arguments, **kwargs):
    return subprocess.run(
        _command(*arguments),
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def _backed_up_epoch(backup_dir):
    try:
        with open(os.path.join(backup_dir, "training_metadata.json")) as file:
            return json.load(file)["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_sigkilled_finetune_resumes_and_matches_uninterrupted_run(tmp_path):
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    epochs = 40

    def arguments(name):
        return [
            f"--pretrained={pretrained}",
            "--train_split=train",
            "--test_split=test[:32]",
            "--classes=0-4",
            "--shift=invert",
            f"--epochs={epochs}",
            "--lambda=0.1",
            "--deterministic",
            f"--output={tmp_path / name}.keras",
            f"--backup_dir={tmp_path / name}_backup",
        ]

    result = _run(arguments("uninterrupted"))
    assert result.returncode == 0, result.stderr
    again = _run(arguments("again"))
    assert again.returncode == 0, again.stderr

    backup_dir = str(tmp_path / "killed_backup")
    process = subprocess.Popen(
        _command(*arguments("killed")),
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while _backed_up_epoch(backup_dir) < 3 and time.monotonic() < deadline:
        assert process.poll() is None, "finished before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = _backed_up_epoch(backup_dir)
    assert 3 <= killed_at < epochs
    assert not os.path.exists(tmp_path / "killed.keras")

    resumed = _run(arguments("killed"))
    assert resumed.returncode == 0, resumed.stderr
    # Keras's progress bar names the epochs run: the rerun starts after the
    # backed-up epoch instead of starting over.
    assert f"Epoch {killed_at + 1}/{epochs}" in resumed.stdout
    assert f"Epoch {killed_at}/{epochs}" not in resumed.stdout

    def weights(name):
        path = str(tmp_path / f"{name}.keras")
        return keras.models.load_model(path).get_weights()

    expected = weights("uninterrupted")
    for a, b in zip(weights("killed"), expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # --deterministic: two full runs are bit-identical.
    for a, b in zip(weights("again"), expected, strict=True):
        np.testing.assert_array_equal(a, b)


# Outputs are whole or absent, and replaced only with --overwrite.


def test_failed_save_keeps_the_previous_output(tmp_path, monkeypatch):
    path = str(tmp_path / "model.keras")
    old = classifiers.build_classifier(
        "mlp", input_shape=(8, 8, 1), num_classes=10, seed=0
    )
    saving.save_atomically(old, path)

    def fail(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as file:
            file.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", fail)
    new = classifiers.build_classifier(
        "mlp", input_shape=(8, 8, 1), num_classes=10, seed=1
    )
    with pytest.raises(OSError, match="disk full"):
        saving.save_atomically(new, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.keras"]
    for a, b in zip(
        keras.models.load_model(path).get_weights(),
        old.get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_existing_outputs_need_overwrite(tmp_path):
    existing = str(tmp_path / "exists.keras")
    _save_classifier(existing)
    (tmp_path / "serving").mkdir()
    cases = [
        (
            ["--output", existing],
            r"--output exists already; pass --overwrite to replace it",
        ),
        (
            ["--export_dir", str(tmp_path / "serving")],
            r"--export_dir exists already; pass --overwrite to replace it",
        ),
    ]
    for arguments, message in cases:
        with flagsaver.flagsaver(), pytest.raises(flags.Error, match=message):
            FLAGS(["finetune", *arguments])
        with flagsaver.flagsaver():
            FLAGS(["finetune", *arguments, "--overwrite"])


# Bad input: one clear error naming the problem and the fix.


def test_labels_outside_the_model_classes_are_refused(tmp_path):
    pretrained = _save_classifier(tmp_path / "p.keras", num_classes=5)
    with pytest.raises(
        ValueError,
        match=r"The labels must be < 5, the model's number of classes; the "
        r"first batch holds [5-9]; use a model with as many outputs",
    ):
        _finetune(tmp_path, pretrained)


def test_input_shape_mismatch_is_refused(tmp_path):
    pretrained = _save_classifier(tmp_path / "p.keras", input_shape=(4, 4, 1))
    with pytest.raises(
        ValueError,
        match=r"Input shape \(8, 8, 1\) does not match the model's input "
        r"shape \(4, 4, 1\)",
    ):
        _finetune(tmp_path, pretrained)


def test_empty_selection_is_refused(tmp_path):
    pretrained = _save_classifier(tmp_path / "p.keras")
    with pytest.raises(ValueError, match=r"The dataset is empty"):
        _finetune(tmp_path, pretrained, classes=["42"])


@pytest.mark.parametrize("content", ["truncated", "text"])
def test_unreadable_pretrained_file_is_refused(tmp_path, content):
    path = tmp_path / "p.keras"
    if content == "truncated":
        _save_classifier(path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_text("not a model")
    with pytest.raises(
        ValueError,
        match=rf"Cannot load a Keras model from '{path}' \(.+\); pass a "
        r".keras file written by model.save\(\)",
    ):
        _finetune(tmp_path, str(path))


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--lambda=nan", r"--lambda must be a finite number >= 0"),
        ("--lambda=inf", r"--lambda must be a finite number >= 0"),
        ("--lambda=abc", r"could not convert string to float: 'abc'"),
        ("--learning_rate=nan", r"--learning_rate must be a finite number"),
    ],
)
def test_bad_numbers_are_refused(argument, message):
    with flagsaver.flagsaver(), pytest.raises(flags.Error, match=message):
        FLAGS(["finetune", argument])


def test_command_line_errors_are_one_line(tmp_path):
    path = tmp_path / "p.keras"
    path.write_text("not a model")
    result = _run(
        [f"--pretrained={path}", f"--output={tmp_path / 'out.keras'}"]
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: Cannot load a Keras model from '{path}'")


# Numerical faults.


def test_diverging_loss_stops_without_writing_the_output(tmp_path):
    pretrained = _save_classifier(tmp_path / "p.keras")
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(
        RuntimeError,
        match=r"Non-finite loss at epoch \d+, step \d+: loss=\S+, "
        r"task_loss=\S+, distill_loss=\S+\. Training stopped",
    ):
        _finetune(
            tmp_path,
            pretrained,
            learning_rate=1e30,
            epochs=3,
            backup_dir=backup_dir,
        )
    assert not os.path.exists(tmp_path / "finetuned.keras")


def test_pretrain_refuses_an_empty_selection(tmp_path):
    output = str(tmp_path / "p.keras")
    with (
        flagsaver.flagsaver(**TINY, output=output, classes=["42"]),
        pytest.raises(ValueError, match=r"The dataset is empty"),
    ):
        pretrain.main(["pretrain"])
