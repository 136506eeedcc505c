"""The benchmark scripts run and print their tables (numbers not checked:
speed is measured by the benchmarks, never asserted)."""

import pytest

from tests import helpers

# Six TensorFlow processes on the full benchmark data: about 30 s; the
# defaults table about two minutes more.
pytestmark = pytest.mark.slow


def _run(*args):
    result = helpers.run_binary(*args)
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
    # On arrays each timed epoch is a one-epoch `fit`, which makes no
    # cache pass: none is reported.
    assert rows[4].startswith("| mlp | sft_cached |")
    assert rows[4].endswith("|  |")


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


def test_speed_prints_each_table_and_the_decisions():
    result = helpers.run_binary(
        "benchmarks.speed",
        "--models=mlp",
        "--rounds=1",
        "--epochs=1",
        "--fit_rounds=1",
        "--seeds=1",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "logical CPUs" in lines[0]
    rows = [line.split("|")[1:3] for line in lines if line.startswith("| mlp")]
    variants = [variant.strip() for _, variant in rows]
    # Nine step variants, five short fits, four whole fits, then four
    # precisions.
    assert variants[:9] == [
        "plain",
        "distiller",
        "sft_live",
        "sft_unguarded",
        "sft_keras_adam",
        "sft_cached",
        "sft_bfloat16",
        "sft_float16",
        "sft_int8",
    ]
    assert len(rows) == 9 + 5 + 4 + 4
    decisions = [line for line in lines if line.startswith("- ")]
    assert [line.split(" ")[1] for line in decisions] == [
        "guard_nonfinite=True",
        "cache_teacher=True",
        "teacher_dtype=None",
        "digits",
    ]


def test_stability_trains_a_binary_classifier_at_the_defaults():
    rows = _run(
        "benchmarks.stability",
        "--learning_rates=0.05",
        "--seeds=0",
        "--epochs=1",
    )
    assert [row.split("|")[3].strip() for row in rows[2:]] == [
        "plain",
        "SFT defaults",
    ]
    # The teacher's logits are nearly equal on some digits: the term must
    # not weigh them up until the step is no longer finite.
    assert "NonFiniteLossError" not in rows[3]
