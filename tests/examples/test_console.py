"""What the binaries show: tables on stdout, progress on stderr, and none
of TensorFlow's log lines."""

import os
import re
import subprocess
import sys

import pytest

from examples.lib import console

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
# What /work/shared/tools/fresh-clone-check counts as lines a newcomer
# reads as errors, and absl's prefix (`I1206 18:51:10.918478 1405 x.py:1]`).
NOISE = re.compile(
    r"^[EW]0000 |^E[0-9]{4} |cuInit|triggered tf.function retracing"
    r"|NodeDef mentions"
)
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


def test_format_duration():
    assert console.format_duration(4.4) == "4 s"
    assert console.format_duration(59.4) == "59 s"
    assert console.format_duration(59.6) == "1 min"
    assert console.format_duration(100) == "1 min 40 s"
    assert console.format_duration(104) == "1 min 40 s"
    assert console.format_duration(3599) == "1 h"
    assert console.format_duration(7500) == "2 h 5 min"


def test_progress_tells_the_step_and_the_time_left(capsys):
    times = iter([0.0, 10.0, 30.0])
    progress = console.Progress(4, clock=lambda: next(times))
    progress.step("pretraining")
    progress.step("SFT, lambda=0.1")
    progress.step("SFT, lambda=1")
    captured = capsys.readouterr()
    assert captured.out == ""
    # 10 s for the first step, then a mean of 15 s for each of two.
    assert captured.err.splitlines() == [
        "[1/4] pretraining ...",
        "[2/4] SFT, lambda=0.1 ... (about 30 s left)",
        "[3/4] SFT, lambda=1 ... (about 30 s left)",
    ]


def test_tables_go_to_stdout_as_markdown_blocks(capsys):
    console.print_table("Results:", "| a |\n| --- |\n| 1 |\n")
    console.print_result("Chosen lambda: 0.1")
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == (
        "Results:\n\n| a |\n| --- |\n| 1 |\n\nChosen lambda: 0.1\n\n"
    )


@pytest.mark.slow
def test_demo_prints_its_table_on_stdout_and_no_tensorflow_log(tmp_path):
    # As a newcomer runs it: without TF_CPP_MIN_LOG_LEVEL (which
    # conftest.py sets for the tests). Before the binaries kept them out,
    # this run printed the cuInit line (on a machine without a GPU), two
    # retracing warnings, each in two forms (four models: pretrained,
    # plain, SFT, anchors) and a NodeDef line (the anchors' pipeline).
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.demo",
            f"--output_dir={tmp_path}",
            "--lambdas=0.5",
            "--l2_sp_alphas=",
            "--anchor_lambdas=0.5",
            "--anchor_count=20",
            "--new_head_lambdas=",
            "--epochs=1",
            "--pretrain_epochs=1",
            "--batch_size=64",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    for stream in (run.stdout, run.stderr):
        assert not [line for line in stream.splitlines() if NOISE.search(line)]
    out = run.stdout.splitlines()
    assert not [line for line in out if ABSL_PREFIX.match(line)]
    assert f"Forgetting (also in {tmp_path / 'results.md'}):" in out
    rows = [line for line in out if line.startswith("|")]
    table = (tmp_path / "results.md").read_text().splitlines()
    # Then the retained accuracy by epoch, in a table of its own.
    assert rows[: len(table)] == table
    assert [line.split(" | ")[0] for line in rows[2:6]] == [
        "| pretrained",
        "| plain fine-tuning",
        "| SFT",
        "| SFT, 20 anchors",
    ]
    err = run.stderr.splitlines()
    assert err[0] == "[1/4] pretraining on all classes ..."
    assert re.fullmatch(
        r"\[4/4\] SFT, 20 anchors, lambda=0.5 \.\.\. \(about .+ left\)",
        err[3],
    )
    # Progress alone: no absl prefix, no warning.
    assert len(err) == 4, run.stderr
