"""`benchmarks/gpu.py` prints a row for every setting, and its ratios and
table are computed as by hand (speed itself is never asserted)."""

import itertools
import json

import numpy as np
import pytest

from benchmarks import report
from tests import helpers


def test_paired_ratio_divides_the_reference_by_the_variant_in_each_round():
    times = [2.0, 4.0, 1.0, 3.0, 5.0]
    reference = [1.0, 3.0, 1.0, 3.3, 4.0]
    ratios = np.array(reference) / np.array(times)
    median, first, third = report.paired_ratio(times, reference)
    assert median == pytest.approx(np.median(ratios))
    # Exclusive quartiles, as `statistics.quantiles` computes them.
    assert (first, third) == pytest.approx(
        np.percentile(ratios, [25, 75], method="weibull")
    )
    assert report.paired_ratio([2.0], [1.0]) == (0.5, 0.5, 0.5)


def test_ratios_compare_each_row_with_its_groups_references():
    rows = [
        {"model": "m", "spe": 1, "variant": "plain", "speed": 200.0},
        {"model": "m", "spe": 1, "variant": "sft", "speed": 150.0},
        {"model": "m", "spe": 1, "variant": "distiller", "speed": 120.0},
        {"model": "m", "spe": 8, "variant": "sft", "speed": 90.0},
        {"model": "m", "spe": 8, "variant": "plain", "speed": 60.0},
    ]
    result = report.with_ratios(
        rows,
        value="speed",
        group=("model", "spe"),
        references=("plain", "distiller"),
    )
    assert [r["vs plain"] for r in result] == [
        1.0,
        150 / 200,
        120 / 200,
        90 / 60,
        1.0,
    ]
    # The second group has no Distiller row.
    assert [r["vs distiller"] for r in result] == [
        200 / 120,
        150 / 120,
        1.0,
        None,
        None,
    ]
    assert result[0]["speed"] == 200.0


def test_ratios_of_times_are_the_reference_time_over_the_row_time():
    rows = [
        {"epochs": 5, "variant": "plain", "fit_s": 3.0},
        {"epochs": 5, "variant": "sft_live", "fit_s": 4.0},
    ]
    result = report.with_ratios(
        rows,
        value="fit_s",
        group=("epochs",),
        references=("plain",),
        lower_is_better=True,
    )
    assert [r["vs plain"] for r in result] == [1.0, 0.75]


def test_markdown_formats_each_column_and_prints_missing_values_as_na():
    lines = report.markdown(
        [
            {"variant": "plain", "speed": 12345.6, "peak": None},
            {"variant": "sft", "speed": 0.5},
        ],
        [
            ("variant", "variant", "{}"),
            ("examples/s", "speed", "{:,.0f}"),
            ("peak MiB", "peak", "{:.1f}"),
        ],
    )
    assert lines == [
        "| variant | examples/s | peak MiB |",
        "| --- | --- | --- |",
        "| plain | 12,346 | n/a |",
        "| sft | 0 | n/a |",
    ]


@pytest.mark.slow
def test_smoke_run_prints_and_writes_every_row(tmp_path):
    # 40 rows, each traced and compiled on CPU: 5 to 15 minutes on two
    # shared cores.
    result = helpers.run_binary(
        "benchmarks.gpu",
        "--smoke",
        "--steps_per_execution=1,4",
        f"--output_dir={tmp_path}",
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line[:1] == "|"]
    expected = [
        f"| {model} | {variant} | {jit_compile} | {steps} | 16 |"
        for model, jit_compile, steps, variant in itertools.product(
            ("mlp", "resnet"),
            (False, True),
            (1, 4),
            ("plain", "sft_live", "sft_cached", "distiller", "sft_bfloat16"),
        )
    ]
    assert len(rows) == 2 + len(expected)
    starts = [
        row[: len(start)] for row, start in zip(rows[2:], expected, strict=True)
    ]
    assert starts == expected
    # Each row compared with its own setting's plain and Distiller rows.
    assert all(row.split("|")[7].strip() == "1.00" for row in rows[2::5])
    assert all(row.split("|")[8].strip() == "1.00" for row in rows[5::5])
    # No GPU here: memory is not available.
    assert all("| n/a | n/a |" in row for row in rows[2:])
    assert (tmp_path / "gpu_benchmark.md").read_text().splitlines() == rows
    raw = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    assert raw["device"] == "CPU"
    assert len(raw["rows"]) == len(expected)
    assert all(r["timed_epochs"] == 1 for r in raw["rows"])


def test_int8_teacher_is_refused_under_mixed_float16():
    result = helpers.run_binary(
        "benchmarks.gpu",
        "--variants=sft_int8",
        "--mixed_precision=mixed_float16",
    )
    assert result.returncode != 0
    assert (
        "Invalid value for flag `variants`. Expected no `sft_int8` under "
        "`--mixed_precision=mixed_float16` (Keras's int8 quantization "
        "refuses float16 layers)." in result.stderr
    )


@pytest.mark.slow
def test_smoke_run_times_an_int8_teacher_when_asked(tmp_path):
    result = helpers.run_binary(
        "benchmarks.gpu",
        "--smoke",
        "--models=mlp",
        "--variants=plain,sft_int8",
        "--jit_compile=false,true",
        "--steps_per_execution=1",
        f"--output_dir={tmp_path}",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line[:1] == "|"]
    assert [row.split("|")[1:4] for row in rows[2:]] == [
        [" mlp ", f" {variant} ", f" {jit} "]
        for jit in ("False", "True")
        for variant in ("plain", "sft_int8")
    ]
