"""The benchmark scripts run and print their tables (numbers not checked:
speed is measured by the benchmarks, never asserted)."""

import os
import pathlib
import subprocess
import sys

import pytest

# Six TensorFlow processes on the full benchmark data: about 30 s.
pytestmark = pytest.mark.slow

_ROOT = pathlib.Path(__file__).parent.parent


def _run(*args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [line for line in result.stdout.splitlines() if line.startswith("|")]


def test_throughput_prints_a_row_per_variant():
    rows = _run(
        "benchmarks.throughput",
        "--models=mlp",
        "--variants=plain,sft_live,sft_cached",
        "--rounds=1",
        "--input=arrays",
    )
    assert len(rows) == 2 + 3
    assert rows[2].startswith("| mlp | plain | False | 1 |")
    assert "| 1.00 |" in rows[2]
    # The cached variant reports its one-time pass.
    assert rows[4].startswith("| mlp | sft_cached |")
    assert not rows[4].endswith("|  |")


def test_whole_fit_prints_a_row_per_variant():
    rows = _run(
        "benchmarks.whole_fit", "--models=mlp", "--epochs=1", "--rounds=1"
    )
    assert [row.split("|")[2].strip() for row in rows[2:]] == [
        "plain",
        "distiller",
        "sft_live",
        "sft_cached",
    ]
