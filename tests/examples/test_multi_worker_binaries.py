"""`examples.finetune` on two workers of one machine: each output written
once, a lost worker, a relaunched job, and a worker whose peer never came.

Every test starts processes (slow: `make test-all`) and kills them all
when it ends, however it ends.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from examples.lib import classifiers
from examples.lib import local_cluster
from tests import helpers

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
EPOCHS = 6
_TIMEOUT_S = 600
_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
_LOST = re.compile(
    r"^Error: lost a worker of the cluster \((UnavailableError|"
    r"DeadlineExceededError): .+\); relaunch the whole job, every worker "
    r"with the same command \(with --backup_dir it resumes from the last "
    r"backup\)$"
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pretrained") / "pretrained.keras")
    classifiers.build_classifier(
        "mlp", input_shape=(8, 8, 1), num_classes=10, seed=0
    ).save(path)
    return path


def _flags(directory, pretrained):
    """The flags of one job, its outputs in `directory`."""
    # 512 examples, 16 full batches: TensorFlow splits a last partial batch
    # unevenly between the workers (16 and 6 of 22), whose step then
    # differs from one process's.
    return [
        f"--pretrained={pretrained}",
        "--train_split=train[:512]",
        "--test_split=test[:64]",
        "--shift=invert",
        f"--epochs={EPOCHS}",
        "--lambda=0.1",
        "--deterministic",
        "--cache_teacher",
        f"--cache_dir={directory / 'cache'}",
        f"--output={directory / 'finetuned.keras'}",
        f"--backup_dir={directory / 'backup'}",
        "--collective_timeout=60",
    ]


def _launch(flags):
    """`python -m examples.launch_local --workers=2 -- FLAGS`, to its end."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.launch_local",
            "--workers=2",
            "--",
            *flags,
        ],
        cwd=REPO,
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
    )


def _weights(path):
    return keras.models.load_model(path).get_weights()


@pytest.fixture(scope="module")
def launched(tmp_path_factory, pretrained):
    """The uninterrupted job, run by `launch_local` with every output flag:
    `(directory, completed process)`."""
    directory = tmp_path_factory.mktemp("launched")
    result = _launch(
        [
            *_flags(directory, pretrained),
            f"--export_dir={directory / 'serving'}",
            f"--checkpoint_dir={directory / 'checkpoints'}",
            f"--log_dir={directory / 'logs'}",
        ]
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return directory, result


def test_two_workers_write_each_output_once(launched):
    directory, result = launched
    for worker in (0, 1):
        assert f"[worker {worker}] Epoch {EPOCHS}/{EPOCHS}" in result.stdout
    assert "in use by another run" not in result.stderr
    assert "[worker 1] " in result.stderr
    assert re.search(
        r"\[worker 0\] .*student saved to .*finetuned\.keras", result.stderr
    )
    assert re.search(
        r"\[worker 1\] .*the chief writes the outputs", result.stderr
    )
    assert sorted(os.listdir(directory)) == [
        "cache",
        "checkpoints",
        "finetuned.keras",
        "logs",
        "serving",
    ]  # no lock, temporary or worker file left; the backup removed
    assert sorted(os.listdir(directory / "checkpoints")) == [
        f"epoch_{epoch:03d}.keras" for epoch in range(1, EPOCHS + 1)
    ]
    assert os.path.isfile(directory / "serving" / "saved_model.pb")


def test_two_workers_equal_one_process(launched, pretrained, tmp_path):
    directory, _ = launched
    result = subprocess.run(
        [sys.executable, "-m", "examples.finetune"]
        + _flags(tmp_path, pretrained),
        cwd=REPO,
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    expected = _weights(tmp_path / "finetuned.keras")
    update = max(
        np.abs(a - b).max()
        for a, b in zip(
            expected,
            keras.models.load_model(pretrained).get_weights(),
            strict=True,
        )
    )
    assert update > 1e-2  # the comparison below is not vacuous
    for a, b in zip(
        _weights(directory / "finetuned.keras"), expected, strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _start(command, count, directory, *, present=None):
    """Starts the workers `present` (default: all) of a cluster of `count`
    workers of `command` on 127.0.0.1, each with its stderr in
    `directory/worker{i}.log`. Returns the processes and the addresses."""
    addresses = [
        f"127.0.0.1:{port}" for port in local_cluster.free_ports(count)
    ]
    processes = []
    for index in range(count) if present is None else present:
        with open(directory / f"worker{index}.log", "w") as log:
            # The child holds its own copy of the log's descriptor.
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=REPO,
                    env={
                        **_ENV,
                        "TF_CONFIG": local_cluster.tf_config(addresses, index),
                    },
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
    return processes, addresses


def _last_line(directory, index):
    return (
        (directory / f"worker{index}.log").read_text().strip().splitlines()[-1]
    )


@pytest.mark.parametrize("lost", [1, 0], ids=["worker_1", "chief"])
def test_job_that_lost_a_worker_resumes_when_relaunched(
    launched, pretrained, tmp_path, lost
):
    flags = _flags(tmp_path, pretrained)
    command = local_cluster.binary_command("finetune", flags)
    processes, _ = _start(command, 2, tmp_path)
    try:
        _wait_for_first_backup(processes, tmp_path / "backup")
        processes[lost].kill()
        killed = time.monotonic()
        survivor = processes[1 - lost]
        survivor.wait(timeout=_TIMEOUT_S)
        waited = time.monotonic() - killed
    finally:
        local_cluster.stop(processes, seconds=0)
    killed_at = helpers.backed_up_epoch(tmp_path / "backup")
    assert 1 <= killed_at < EPOCHS
    # TensorFlow's heartbeats find a dead peer within about 10 s; the
    # survivor stops well within --collective_timeout, with one line.
    assert waited < 60, waited
    assert survivor.returncode == 1
    last = _last_line(tmp_path, 1 - lost)
    assert _LOST.match(last), last
    assert not os.path.exists(tmp_path / "finetuned.keras")

    result = _launch(flags)  # the whole job again, the same command
    assert result.returncode == 0, result.stderr[-5000:]
    # The workers start after the backed-up epoch rather than over.
    assert f"[worker 0] Epoch {killed_at + 1}/{EPOCHS}" in result.stdout
    assert f"Epoch {killed_at}/{EPOCHS}" not in result.stdout
    directory, _ = launched
    expected = _weights(directory / "finetuned.keras")
    resumed = _weights(tmp_path / "finetuned.keras")
    difference = max(
        np.abs(a - b).max() for a, b in zip(resumed, expected, strict=True)
    )
    print(f"killed after epoch {killed_at}; max |difference| {difference:g}")
    assert difference <= 1e-5


def _worker_0_alone(tmp_path, pretrained, timeout):
    """Starts worker 0 of a cluster of two whose worker 1 never starts;
    returns the process and the cluster's addresses."""
    command = local_cluster.binary_command(
        "finetune",
        [*_flags(tmp_path, pretrained), f"--collective_timeout={timeout}"],
    )
    (process,), addresses = _start(command, 2, tmp_path, present=[0])
    return process, addresses


def test_worker_whose_peer_never_starts_stops_at_the_timeout(
    pretrained, tmp_path
):
    process, addresses = _worker_0_alone(tmp_path, pretrained, 5)
    try:
        process.wait(timeout=_TIMEOUT_S)
    finally:
        local_cluster.stop([process], seconds=0)
    assert process.returncode == 1
    assert _last_line(tmp_path, 0) == (
        "Error: The cluster of TF_CONFIG did not form within 5 s: no answer "
        f"from worker 1 at {addresses[1]}; start every worker with the same "
        "cluster in TF_CONFIG, or relaunch the whole job"
    )


def _listening(address):
    host, port = address.split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def test_sigterm_ends_a_worker_waiting_for_its_peer(pretrained, tmp_path):
    process, addresses = _worker_0_alone(tmp_path, pretrained, 600)
    try:
        deadline = time.monotonic() + _TIMEOUT_S
        # It listens on its own address while it waits for worker 1.
        while not _listening(addresses[0]):
            assert process.poll() is None, _last_line(tmp_path, 0)
            assert time.monotonic() < deadline
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    finally:
        local_cluster.stop([process], seconds=0)
    assert process.returncode == -signal.SIGTERM


def test_sigterm_ends_a_worker_waiting_on_a_stalled_peer(pretrained, tmp_path):
    command = local_cluster.binary_command(
        "finetune", _flags(tmp_path, pretrained)
    )
    processes, _ = _start(command, 2, tmp_path)
    try:
        _wait_for_first_backup(processes, tmp_path / "backup")
        processes[0].send_signal(signal.SIGSTOP)  # the chief stalls
        time.sleep(2)  # worker 1 waits in a collective
        processes[1].send_signal(signal.SIGTERM)
        processes[1].wait(timeout=10)
    finally:
        local_cluster.stop(processes, seconds=0)
    assert processes[1].returncode == -signal.SIGTERM


def _wait_for_first_backup(processes, backup_dir):
    """Waits until the job has backed up its first epoch, every worker
    still running."""
    deadline = time.monotonic() + _TIMEOUT_S
    while helpers.backed_up_epoch(backup_dir) < 1:
        assert all(p.poll() is None for p in processes), "ended early"
        assert time.monotonic() < deadline, "no backup in time"
        time.sleep(0.05)
