"""Failure behaviour: preemption, bad input, numerical faults, determinism."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from examples import common_flags
from examples import evaluate
from examples import finetune
from examples import pretrain
from examples.lib import classifiers
from examples.lib import saving
from examples.lib import training
from examples.lib.run_lock import RunLock
from examples.lib.training_config import TrainingConfig
from keras_sft import data
from tests import helpers

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
    while (
        helpers.backed_up_epoch(backup_dir) < 3 and time.monotonic() < deadline
    ):
        assert process.poll() is None, "finished before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = helpers.backed_up_epoch(backup_dir)
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


@pytest.mark.slow
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
        match=r"Non-finite [a-z_, ]*loss[a-z_, ]* at epoch \d+, step \d+: "
        r"the step was not applied and training stopped",
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


# Backups belong to their run and survive any interruption.


def test_backup_interrupted_while_written_resumes(tmp_path, monkeypatch):
    # Ctrl-C in the middle of the third epoch's backup: the weights file
    # is half written (valid HDF5 start, arrays missing) when it comes.
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    expected = _finetune_directly(
        tmp_path, "uninterrupted", pretrained, str(tmp_path / "backup_a")
    )
    backup_dir = str(tmp_path / "backup_b")
    helpers.interrupt_third_weights_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _finetune_directly(tmp_path, "interrupted", pretrained, backup_dir)
    monkeypatch.undo()
    assert helpers.backed_up_epoch(backup_dir) == 2
    resumed = _finetune_directly(
        tmp_path, "interrupted", pretrained, backup_dir
    )
    for a, b in zip(resumed, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _interrupted_binary_run(tmp_path, monkeypatch, pretrained, **overrides):
    """Runs finetune until the end of its first epoch and its backup, as a
    kill would stop it there."""
    make_callbacks = training._callbacks

    def callbacks_then_preempt(extra, config):
        return [*make_callbacks(extra, config), _PreemptAfter(0)]

    monkeypatch.setattr(training, "_callbacks", callbacks_then_preempt)
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(_PreemptedError):
        _finetune(
            tmp_path, pretrained, epochs=3, backup_dir=backup_dir, **overrides
        )
    monkeypatch.undo()
    assert helpers.backed_up_epoch(backup_dir) == 1
    return backup_dir


def _tree(directory):
    """Every file under `directory`, relative path to bytes."""
    tree = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                tree[os.path.relpath(path, directory)] = file.read()
    return tree


@pytest.mark.parametrize(
    "change, difference",
    [
        ({"lambda": 0.5}, r"lambda: 0\.03 there, 0\.5 here"),
        # The same check as the lambda case on another recorded field, at
        # the cost of a second interrupted run.
        pytest.param(
            {"seed": 4}, r"seed: 0 there, 4 here", marks=pytest.mark.slow
        ),
        ({"pretrained": "other"}, r"pretrained_sha256: '[0-9a-f]{64}' there"),
    ],
)
def test_backup_of_another_run_is_refused(
    tmp_path, monkeypatch, change, difference
):
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    backup_dir = _interrupted_binary_run(tmp_path, monkeypatch, pretrained)
    before = _tree(backup_dir)
    if change.get("pretrained") == "other":
        change = {"pretrained": _save_classifier(tmp_path / "other.keras")}
        # Same architecture, other weights: only the checksum tells.
        keras.models.load_model(change["pretrained"]).save(change["pretrained"])
    with pytest.raises(
        ValueError,
        match=rf"^--backup_dir={backup_dir} holds the backup of another run "
        rf"\(.*{difference}.*\); pass another --backup_dir or delete it to "
        r"start over$",
    ):
        _finetune(
            tmp_path,
            change.pop("pretrained", pretrained),
            epochs=3,
            backup_dir=backup_dir,
            **change,
        )
    assert _tree(backup_dir) == before  # intact: the same run resumes
    assert not os.path.exists(tmp_path / "finetuned.keras")
    _finetune(tmp_path, pretrained, epochs=3, backup_dir=backup_dir)
    assert not os.path.exists(backup_dir)
    # Output written; no lock or temporary file left.
    assert "finetuned.keras" in os.listdir(tmp_path)
    assert not [name for name in os.listdir(tmp_path) if name[0] == "."]


def test_backup_without_its_record_is_refused(tmp_path):
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    (backup_dir / "training_metadata.json").write_text('{"epoch": 1}')
    with pytest.raises(
        ValueError,
        match=r"--backup_dir=\S+ holds a backup of an unknown run \(no "
        r"readable run.json\); pass another --backup_dir or delete it",
    ):
        _finetune(tmp_path, pretrained, backup_dir=str(backup_dir))


@pytest.mark.parametrize("flag", ["output", "backup_dir", "export_dir"])
def test_a_second_concurrent_run_fails_at_start(tmp_path, flag):
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    paths = {
        "output": str(tmp_path / "finetuned.keras"),
        "backup_dir": str(tmp_path / "backup"),
        "export_dir": str(tmp_path / "serving"),
    }
    started = []
    with (
        RunLock(paths[flag], flag=f"--{flag}"),  # the first run
        mock.patch.object(training, "finetune", lambda **_: started.append(1)),
        pytest.raises(
            RuntimeError,
            match=rf"^--{flag}={paths[flag]} is in use by another run "
            r"\(it holds \S+\.lock\); wait for it to end or pass another "
            rf"--{flag}$",
        ),
    ):
        _finetune(tmp_path, pretrained, **paths)
    assert not started
    assert sorted(os.listdir(tmp_path)) == ["pretrained.keras"]


@pytest.mark.slow
def test_a_second_process_fails_at_start_with_one_line(tmp_path):
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    output = str(tmp_path / "finetuned.keras")
    with RunLock(output, flag="--output"):
        result = _run([f"--pretrained={pretrained}", f"--output={output}"])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: --output={output} is in use by another run (it holds "
        f"{tmp_path}/.finetuned.keras.lock); wait for it to end or pass "
        "another --output"
    )


# Files: the user's umask, checked before training, no leftovers.


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755)])
def test_outputs_get_the_modes_of_the_umask(
    tmp_path, umask, file_mode, dir_mode
):
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    previous = os.umask(umask)
    try:
        output = _finetune(
            tmp_path,
            pretrained,
            export_dir=str(tmp_path / "serving"),
            log_dir=str(tmp_path / "logs"),
        )
    finally:
        os.umask(previous)
    assert os.stat(output).st_mode & 0o777 == file_mode
    for root, _, names in os.walk(tmp_path / "serving"):
        assert os.stat(root).st_mode & 0o777 == dir_mode
        for name in names:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == (
                file_mode
            )


def test_save_follows_a_stricter_umask(tmp_path):
    model = classifiers.build_classifier(
        "mlp", input_shape=(8, 8, 1), num_classes=10
    )
    previous = os.umask(0o077)
    try:
        saving.save_atomically(model, str(tmp_path / "m.keras"))
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "m.keras").st_mode & 0o777 == 0o600


def test_temporaries_of_a_killed_run_are_removed(tmp_path):
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    (tmp_path / ".finetuned.keras.tmp-1f2e.keras").write_bytes(b"PK partial")
    (tmp_path / ".serving.tmp-9a8b").mkdir()
    (tmp_path / ".serving.tmp-9a8b" / "saved_model.pb").write_bytes(b"")
    (tmp_path / ".notes.tmp-1").write_text("not ours")
    _finetune(tmp_path, pretrained, export_dir=str(tmp_path / "serving"))
    assert sorted(os.listdir(tmp_path)) == [
        ".notes.tmp-1",
        "finetuned.keras",
        "pretrained.keras",
        "serving",
    ]


@pytest.mark.parametrize(
    "flag, message",
    [
        ("output", r"Cannot write --output={path}: Not a directory"),
        ("export_dir", r"Cannot write --export_dir={path}: Not a directory"),
        ("backup_dir", r"Cannot write --backup_dir={path}: Not a directory"),
        ("log_dir", r"Cannot write --log_dir={path}: Not a directory"),
        ("cache_dir", r"Cannot write --cache_dir={path}: Not a directory"),
        ("checkpoint_dir", r"Cannot write --checkpoint_dir={path}: Not a"),
        ("log_dir", r"--log_dir={file} is a file; pass a directory"),
        ("output", r"--output={directory} is a directory; pass a file name"),
    ],
)
def test_unwritable_paths_are_refused_before_training(tmp_path, flag, message):
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    (tmp_path / "a_dir.keras").mkdir()
    values = {
        "path": str(blocker / "sub" / ("x.keras" if flag == "output" else "x")),
        "file": str(blocker),
        "directory": str(tmp_path / "a_dir.keras"),
    }
    key = message.split("{")[1].split("}")[0]
    started = []
    with (
        mock.patch.object(training, "finetune", lambda **_: started.append(1)),
        pytest.raises(OSError, match="^" + message.format(**values)),
    ):
        _finetune(
            tmp_path,
            pretrained,
            # Past the flag check that an existing --output is refused.
            overwrite=key == "directory",
            **{"cache_teacher": flag == "cache_dir", flag: values[key]},
        )
    assert not started


def test_disk_full_during_export_keeps_the_previous_export(
    tmp_path, monkeypatch
):
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    export_dir = str(tmp_path / "serving")
    _finetune(tmp_path, pretrained, export_dir=export_dir)
    before = _tree(export_dir)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tf.saved_model, "save", disk_full)
    with pytest.raises(
        OSError,
        match=rf"^Cannot export the SavedModel to '{export_dir}' \(No space "
        r"left on device\); the previous export, if any, is unchanged and "
        r"the student is saved in '\S+finetuned.keras'$",
    ):
        _finetune(tmp_path, pretrained, export_dir=export_dir, overwrite=True)
    monkeypatch.undo()
    assert _tree(export_dir) == before
    assert sorted(os.listdir(tmp_path)) == [
        "finetuned.keras",
        "pretrained.keras",
        "serving",
    ]
    tf.saved_model.load(export_dir)  # still whole


# The binaries' other silent or unclear cases: one line each.


def test_evaluate_refuses_a_model_with_fewer_outputs(tmp_path):
    path = _save_classifier(tmp_path / "three.keras", num_classes=3)
    with (
        flagsaver.flagsaver(**TINY, model_path=path),
        pytest.raises(
            ValueError,
            match=r"^The labels go up to 9 but the model has 3 outputs; "
            r"evaluate it on its own classes \(--classes\)",
        ),
    ):
        evaluate.evaluate()
    with flagsaver.flagsaver(**TINY, model_path=path, classes=["0-2"]):
        assert 0 <= evaluate.evaluate()["overall"] <= 1


@pytest.mark.parametrize("binary", ["finetune", "evaluate"])
def test_empty_test_split_is_refused(tmp_path, binary):
    pretrained = _save_classifier(tmp_path / "pretrained.keras")
    message = (
        r"^The dataset is empty: --test_split=test\[:0\] of --dataset=digits "
        r"holds no example; pass a split \(and classes\) with examples$"
    )
    with pytest.raises(ValueError, match=message):
        if binary == "finetune":
            _finetune(tmp_path, pretrained, test_split="test[:0]")
        else:
            with flagsaver.flagsaver(
                **{**TINY, "test_split": "test[:0]"}, model_path=pretrained
            ):
                evaluate.evaluate()
    assert not os.path.exists(tmp_path / "finetuned.keras")


def test_truncated_keras_file_is_named_as_such(tmp_path):
    path = tmp_path / "p.keras"
    _save_classifier(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(
        ValueError,
        match=rf"^Cannot load a Keras model from '{path}' \(not a valid "
        r"\.keras file \(truncated or not a zip file\)\)",
    ):
        classifiers.load_classifier(str(path))


def test_tpu_strategy_without_a_tpu_is_one_line():
    with (
        flagsaver.flagsaver(strategy="tpu"),
        pytest.raises(
            RuntimeError,
            match=r"^--strategy=tpu: no TPU at --tpu=local \(.+\); run on a "
            r"TPU VM or pass --tpu=grpc://ADDRESS$",
        ) as error,
    ):
        common_flags.set_up()
    assert "\n" not in str(error.value)


def test_label_error_during_training_is_one_line():
    model = classifiers.build_classifier(
        "mlp", input_shape=(8, 8, 1), num_classes=3
    )
    # Without XLA, whose kernels give NaN for a label out of range rather
    # than TensorFlow's error, which is what this test formats.
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )

    def main(argv):
        labels = np.array([0, 1, 7, 2])
        model.fit(np.zeros((4, 8, 8, 1)), labels, shuffle=False, verbose=0)

    with pytest.raises(SystemExit) as exit_:
        common_flags.one_line_errors(main)(["binary"])
    assert str(exit_.value.code) == (
        "Error: Received a label value of 7 which is outside the valid range "
        "of [0, 3).  Label values: 0 1 7 2 (InvalidArgumentError)"
    )
