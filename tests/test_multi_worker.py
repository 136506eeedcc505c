"""`SFTModel.fit` under `MultiWorkerMirroredStrategy`, two local workers."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tests import multi_worker_case

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_TIMEOUT_S = 180


def _free_ports(count):
    """`count` distinct TCP ports free on 127.0.0.1 at the time of asking."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _start_workers(tmp_path):
    """Starts two workers on 127.0.0.1; returns the processes and outputs."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes, outputs = [], []
    for index in range(len(workers)):
        output = tmp_path / f"worker{index}.npz"
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": workers},
                "task": {"type": "worker", "index": index},
            }
        )
        env["PYTHONPATH"] = str(_ROOT)
        with open(tmp_path / f"worker{index}.log", "w") as log:
            # The child holds its own copy of the log's descriptor.
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.multi_worker_worker", output],
                    cwd=_ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        outputs.append(output)
    return processes, outputs


def _wait(processes, tmp_path):
    """Waits for every process; kills them all if one fails or hangs."""
    try:
        for process in processes:
            process.wait(timeout=_TIMEOUT_S)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for index, process in enumerate(processes):
        log = (tmp_path / f"worker{index}.log").read_text()
        assert process.returncode == 0, f"worker {index} failed:\n{log}"


@pytest.mark.slow
def test_two_workers_equal_one_process(tmp_path):
    processes, outputs = _start_workers(tmp_path)
    try:
        expected_weights, expected_logs = multi_worker_case.train(
            tf.distribute.get_strategy()
        )
    finally:
        _wait(processes, tmp_path)

    update = max(
        np.abs(a - b).max()
        for a, b in zip(
            expected_weights, helpers.mlp().get_weights(), strict=True
        )
    )
    assert update > 1e-2  # the comparison below is not vacuous
    for output in outputs:
        result = np.load(output)
        for index, expected in enumerate(expected_weights):
            np.testing.assert_allclose(
                result[f"arr_{index}"], expected, atol=1e-5
            )
        for key, expected in expected_logs.items():
            assert float(result[f"log_{key}"]) == pytest.approx(
                expected, rel=1e-5
            )
