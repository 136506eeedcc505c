"""examples.launch_local on stand-in workers (short Python commands)."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from examples.lib import local_cluster

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def _python(code):
    return [sys.executable, "-c", code]


def test_tf_config_names_the_cluster_and_the_task():
    config = json.loads(local_cluster.tf_config(["h:1", "h:2"], 1))
    assert config == {
        "cluster": {"worker": ["h:1", "h:2"]},
        "task": {"type": "worker", "index": 1},
    }


def test_free_ports_are_distinct():
    ports = local_cluster.free_ports(4)
    assert len(set(ports)) == 4


def test_binary_command_runs_multi_worker():
    assert local_cluster.binary_command("finetune", ["--epochs=2"]) == [
        sys.executable,
        "-m",
        "examples.finetune",
        "--strategy=multi_worker",
        "--epochs=2",
    ]
    local_cluster.binary_command("finetune", ["--strategy=multi_worker"])


@pytest.mark.parametrize(
    "arguments", [["--strategy=mirrored"], ["--strategy", "default"]]
)
def test_binary_command_refuses_another_strategy(arguments):
    with pytest.raises(
        ValueError,
        match=r"The workers run with --strategy=multi_worker. Received: "
        r"--strategy=(mirrored|default); leave --strategy out",
    ):
        local_cluster.binary_command("finetune", arguments)


def test_workers_output_is_prefixed_and_success_is_zero():
    stdout, stderr = io.StringIO(), io.StringIO()
    code = (
        "import json, os, sys\n"
        "task = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
        "print('result', task)\n"
        "print('progress', task, file=sys.stderr)\n"
    )
    status = local_cluster.launch(
        _python(code), 3, stdout=stdout, stderr=stderr
    )
    assert status == 0
    assert sorted(stdout.getvalue().splitlines()) == [
        f"[worker {i}] result {i}" for i in range(3)
    ]
    assert sorted(stderr.getvalue().splitlines()) == [
        f"[worker {i}] progress {i}" for i in range(3)
    ]


def test_a_failed_worker_stops_the_others_and_gives_its_status():
    code = (
        "import json, os, sys, time\n"
        "task = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
        "sys.exit(3) if task == 1 else time.sleep(60)\n"
    )
    start = time.monotonic()
    status = local_cluster.launch(
        _python(code), 2, stdout=io.StringIO(), stderr=io.StringIO()
    )
    assert status == 3
    assert time.monotonic() - start < 30  # the sleeper got SIGTERM


def test_sigterm_to_the_launcher_stops_the_workers(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    worker = (
        "import os, time\n"
        f"open(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close()\n"
        "time.sleep(60)\n"
    )
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from examples.lib import local_cluster\n"
            f"sys.exit(local_cluster.launch({_python(worker)!r}, 2))\n",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(pids)) < 2:
            assert launcher.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if launcher.poll() is None:
            launcher.kill()
    for pid in os.listdir(pids):
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
