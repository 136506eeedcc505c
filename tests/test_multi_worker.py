"""`SFTModel.fit` under `MultiWorkerMirroredStrategy`, two local workers:
plain training, anchors, the teacher cache, `BackupAndRestore` and the step
guard, each against the same run on one process."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from examples.lib import local_cluster
from tests import helpers
from tests import multi_worker_case

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_TIMEOUT_S = 180


def _start_workers(tmp_path):
    """Starts two workers on 127.0.0.1; returns the processes and outputs."""
    workers = [f"127.0.0.1:{port}" for port in local_cluster.free_ports(2)]
    shared = tmp_path / "shared"
    shared.mkdir()
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
                    [
                        sys.executable,
                        "-m",
                        "tests.multi_worker_worker",
                        output,
                        shared,
                    ],
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


@pytest.fixture(scope="module")
def worker_outputs(tmp_path_factory):
    """The `.npz` outputs of the two workers, once they have ended."""
    tmp_path = tmp_path_factory.mktemp("workers")
    processes, outputs = _start_workers(tmp_path)
    _wait(processes, tmp_path)
    return outputs


@pytest.mark.slow
def test_two_workers_equal_one_process(worker_outputs):
    outputs = worker_outputs
    expected_weights, expected_logs = multi_worker_case.train(
        tf.distribute.get_strategy()
    )

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


def _case(case, worker_outputs, tmp_path):
    """The arrays of `case` on one process, and on each worker."""
    expected = getattr(multi_worker_case, case)(
        tf.distribute.get_strategy(), str(tmp_path)
    )
    results = [
        dict(np.load(f"{output}.{case}.npz")) for output in worker_outputs
    ]
    return expected, results


def _assert_same_weights(expected, result):
    names = sorted(name for name in expected if name.startswith("weight_"))
    assert names
    for name in names:
        np.testing.assert_allclose(result[name], expected[name], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["anchors", "cache_teacher"])
def test_two_workers_equal_one_process_with(case, worker_outputs, tmp_path):
    # One process caches the teacher's outputs (of the anchors too, for
    # "anchors"); the workers run the live teacher, with the same result.
    expected, results = _case(case, worker_outputs, tmp_path)
    for result in results:
        _assert_same_weights(expected, result)


@pytest.mark.slow
def test_backup_written_by_the_chief_alone_and_restored_by_both(
    worker_outputs, tmp_path
):
    expected, (chief, worker) = _case("backup", worker_outputs, tmp_path)
    assert int(expected["writes"]) == 1  # one epoch, one backup
    assert int(chief["writes"]) == 1
    assert int(worker["writes"]) == 0
    for result in (expected, chief, worker):
        assert int(result["epochs_run"]) == 1  # resumed after epoch 1
    for result in (chief, worker):
        _assert_same_weights(expected, result)


@pytest.mark.slow
def test_step_guard_stops_both_workers_at_the_same_step(
    worker_outputs, tmp_path
):
    expected, results = _case("step_guard", worker_outputs, tmp_path)
    message = str(expected["message"])
    assert "inputs `x`" in message, message
    for result in results:
        assert str(result["message"]) == message
