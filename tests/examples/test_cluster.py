"""Multi-worker runs of the binaries without a cluster: which worker
writes, what the others skip, and the one line a lost worker gives."""

import json
import os

import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

import keras_sft
from examples import common_flags
from examples import finetune
from examples.lib import cluster
from examples.lib import training
from examples.lib.training_config import TrainingConfig

FLAGS = flags.FLAGS


@pytest.fixture(autouse=True)
def _parsed_flags():
    """Lets tests read flags without parsing a command line."""
    if not FLAGS.is_parsed():
        FLAGS.mark_as_parsed()


def _task(monkeypatch, task_type, index, chief=False):
    cluster_spec = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    if chief:
        cluster_spec["chief"] = ["127.0.0.1:3"]
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps(
            {
                "cluster": cluster_spec,
                "task": {"type": task_type, "index": index},
            }
        ),
    )


@pytest.mark.parametrize(
    "task_type, index, chief, expected",
    [
        ("worker", 0, False, True),
        ("worker", 1, False, False),
        ("worker", 0, True, False),
        ("chief", 0, True, True),
    ],
)
def test_the_chief_writes(monkeypatch, task_type, index, chief, expected):
    _task(monkeypatch, task_type, index, chief)
    assert cluster.is_chief("multi_worker") is expected
    assert cluster.is_chief("default")  # one process: it writes


def test_without_a_cluster_the_one_worker_writes(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster.is_chief("multi_worker")


def test_other_workers_claim_nothing(monkeypatch, tmp_path):
    _task(monkeypatch, "worker", 1)
    output = str(tmp_path / "out" / "finetuned.keras")
    with (
        flagsaver.flagsaver(strategy="multi_worker", output=output),
        common_flags.claimed_outputs(files=[common_flags.OUTPUT]),
    ):
        assert os.listdir(tmp_path) == []  # no folder, lock or check file
    _task(monkeypatch, "worker", 0)
    with (
        flagsaver.flagsaver(strategy="multi_worker", output=output),
        common_flags.claimed_outputs(files=[common_flags.OUTPUT]),
    ):
        assert os.listdir(tmp_path / "out") == [".finetuned.keras.lock"]


_HEARTBEATS = """Graph execution error:

Detected at node CollectiveReduceV2 defined at (most recent call last):
  File "finetune.py", line 1, in <module>

Collective ops is aborted by: Error reported from /job:worker/task:1: \
The following tasks are unhealthy (stopped sending heartbeats):
/job:worker/replica:0/task:1
The tasks have crashed. Check the task logs for an earlier error.
The error could be from a previous operation. Restart your program to reset.
\t [[{{node CollectiveReduceV2}}]] [Op:__inference_multi_step_on_iterator_1]"""
_TIMED_OUT = (
    "{{function_node __wrapped__CollectiveReduceV2_device_/job:worker/"
    "replica:0/task:1/device:CPU:0}} Collective has timed out during "
    "execution. [Op:CollectiveReduceV2] name: "
)


@pytest.mark.parametrize(
    "error, reason",
    [
        (
            tf.errors.UnavailableError(None, None, _HEARTBEATS),
            "UnavailableError: Error reported from /job:worker/task:1: The "
            "following tasks are unhealthy (stopped sending heartbeats): "
            "/job:worker/replica:0/task:1",
        ),
        (
            tf.errors.DeadlineExceededError(None, None, _TIMED_OUT),
            "DeadlineExceededError: Collective has timed out during execution",
        ),
    ],
)
def test_a_lost_worker_is_one_line(error, reason):
    def main(argv):
        raise error

    with (
        flagsaver.flagsaver(strategy="multi_worker"),
        pytest.raises(SystemExit) as stopped,
    ):
        common_flags.one_line_errors(main)(["finetune"])
    assert str(stopped.value) == (
        f"Error: lost a worker of the cluster ({reason}); relaunch the whole "
        "job, every worker with the same command (with --backup_dir it "
        "resumes from the last backup)"
    )


def test_one_process_keeps_the_generic_line():
    def main(argv):
        raise tf.errors.UnavailableError(None, None, "Socket closed")

    with pytest.raises(SystemExit, match=r"^Error: Socket closed \(Unav"):
        common_flags.one_line_errors(main)(["finetune"])


@pytest.mark.parametrize("value", ["0", "-2", "abc", "1.5", "Epoch"])
def test_backup_freq_is_epoch_or_a_positive_int(value):
    with (
        flagsaver.flagsaver(),
        pytest.raises(
            flags.IllegalFlagValueError,
            match=r"--backup_freq must be 'epoch' or an int > 0",
        ),
    ):
        FLAGS(["finetune", f"--backup_freq={value}"])


@pytest.mark.parametrize("value, save_freq", [("epoch", "epoch"), ("7", 7)])
def test_backup_freq_is_the_backups_save_freq(value, save_freq):
    with flagsaver.flagsaver(backup_freq=value):
        config = TrainingConfig(backup_dir="backup", backup_freq=save_freq)
        assert finetune._backup_freq() == save_freq
    (backup,) = [
        callback
        for callback in training._callbacks([], config)
        if isinstance(callback, keras_sft.BackupAndRestore)
    ]
    assert backup.save_freq == save_freq
