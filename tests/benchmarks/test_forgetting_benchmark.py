"""The forgetting benchmark: its aggregation by hand, a quick run."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import keras_sft
from benchmarks.experiments import forgetting_benchmark
from examples.lib import presets
from examples.lib.training_config import TrainingConfig

_ROOT = pathlib.Path(__file__).parent.parent.parent


def _rows():
    return [
        {
            "shift": "a",
            "method": "m",
            "retained": 0.2,
            "new": 0.9,
            "overall": 0.5,
        },
        {
            "shift": "a",
            "method": "m",
            "retained": 0.4,
            "new": 0.7,
            "overall": 0.6,
        },
        {
            "shift": "a",
            "method": "m",
            "retained": 0.9,
            "new": 0.8,
            "overall": 1.0,
        },
        {
            "shift": "b",
            "method": "m",
            "retained": 0.5,
            "new": 0.5,
            "overall": 0.5,
        },
    ]


def test_aggregate_gives_mean_and_sample_std_per_group():
    summary = forgetting_benchmark.aggregate(_rows(), ("shift", "method"))
    assert [(s["shift"], s["count"]) for s in summary] == [("a", 3), ("b", 1)]
    # Retained of group a: mean 1.5 / 3 = 0.5; squared deviations 0.09,
    # 0.01, 0.16 sum to 0.26, over n - 1 = 2: variance 0.13.
    assert summary[0]["retained_mean"] == pytest.approx(0.5)
    assert summary[0]["retained_spread"] == pytest.approx(0.13**0.5)
    assert summary[0]["new_mean"] == pytest.approx(0.8)
    assert summary[0]["new_spread"] == pytest.approx(0.1)
    assert summary[0]["overall_mean"] == pytest.approx(0.7)
    # One row: no spread.
    assert summary[1]["overall_spread"] == 0.0


def test_markdown_table_rows_in_percent():
    summary = forgetting_benchmark.aggregate(_rows(), ("shift", "method"))
    lines = forgetting_benchmark.markdown_table(
        summary, ("shift", "method"), 3
    ).splitlines()
    assert lines[0].startswith("Mean ± standard deviation over 3 runs")
    assert lines[2] == "| shift | method | retained | new | overall |"
    assert lines[4] == "| a | m | 50.0 ± 36.1 | 80.0 ± 10.0 | 70.0 ± 26.5 |"


def test_choose_prefers_retained_within_tolerance():
    # (retained, new, overall) per strength: 0.1 loses 1 point of new
    # accuracy (within 2) for 30 of retained; 1.0 loses 10 points.
    scores = {0.0: (0.5, 0.90, 0), 0.1: (0.8, 0.89, 0), 1.0: (0.9, 0.8, 0)}
    assert forgetting_benchmark._choose(scores) == 0.1
    # WiSE-FT's alpha: ties go to the smaller, more conservative value.
    tied = {0.5: (0.8, 0.9, 0), 1.0: (0.8, 0.9, 0)}
    assert forgetting_benchmark._choose(tied, conservative=min) == 0.5
    assert forgetting_benchmark._choose(tied) == 1.0


def test_run_benchmark_refuses_unknown_names():
    with pytest.raises(ValueError, match="argument `shifts`. Expected names"):
        forgetting_benchmark.run_benchmark(output_dir="x", shifts=("tilt",))
    with pytest.raises(ValueError, match="WiSE-FT entry among them"):
        forgetting_benchmark.run_benchmark(
            output_dir="x", methods=("WiSE-FT of plain",)
        )


def test_run_grid_passes_the_grid_and_quick_replaces_it(monkeypatch):
    calls = []
    monkeypatch.setattr(
        forgetting_benchmark, "run_benchmark", lambda **kw: calls.append(kw)
    )
    grid = {
        "output_dir": "x",
        "seeds": (4, 5),
        "shifts": ("rotate",),
        "methods": ("plain",),
        "pretrain_epochs": 7,
    }
    forgetting_benchmark.run_grid(epochs=9, **grid)
    forgetting_benchmark.run_grid(quick=True, epochs=9, **grid)
    full, quick = calls
    assert full.pop("config") == TrainingConfig(epochs=9, verbose=0)
    assert full == grid
    assert quick.pop("config").epochs == 3
    assert quick == {
        "output_dir": "x",
        "seeds": (0,),
        "shifts": ("invert", "new_head"),
        "methods": ("plain", "SFT normalized_mse"),
        "pretrain_epochs": 3,
    }


def test_merge_reports_concatenates_the_rows_of_each_run(tmp_path):
    rows = _rows()
    for index, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        part = [
            dict(row, seed=index) for row in rows[2 * index : 2 * index + 2]
        ]
        sweep = [dict(row, distance="mse", **{"lambda": 0.1}) for row in part]
        with open(tmp_path / name / "rows.json", "w") as file:
            json.dump({"rows": part, "sweep": sweep}, file)
    merged = tmp_path / "merged"
    forgetting_benchmark.merge_reports(
        [str(tmp_path / "a"), str(tmp_path / "b")], str(merged)
    )
    table = (merged / "forgetting.md").read_text()
    # The four rows of two seeds: group a from both files, b from one.
    summary = forgetting_benchmark.aggregate(
        [dict(row, seed=0) for row in rows], ("shift", "method")
    )
    assert table == forgetting_benchmark.markdown_table(
        summary, ("shift", "method"), 2
    )
    assert "| mse | 0.1 |" in (merged / "sweep.md").read_text()


def test_binary_defaults_are_the_librarys():
    preset = presets.FORGETTING_BENCHMARK
    assert preset["epochs"] == forgetting_benchmark.TRAINING.epochs
    assert preset["pretrain_epochs"] == forgetting_benchmark.PRETRAIN_EPOCHS


@pytest.mark.slow
def test_quick_run_writes_table_plot_and_merges(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "examples.forgetting_benchmark"]
    run = tmp_path / "run"
    result = subprocess.run(
        [*command, "--quick", f"--output_dir={run}"],
        cwd=_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    table = (run / "forgetting.md").read_text().splitlines()
    # The table on stdout, one progress line per seed and shift on stderr.
    assert "\n".join(table) in result.stdout
    assert "[2/2] seed 0, new_head ..." in result.stderr
    assert [line.split("|")[1:3] for line in table[4:]] == [
        [" invert ", " plain "],
        [" invert ", " SFT normalized_mse "],
        [" new_head ", " plain "],
        [" new_head ", " SFT normalized_mse "],
    ]
    assert (run / "forgetting.png").stat().st_size > 0
    assert "| normalized_mse | 0.3 |" in (run / "sweep.md").read_text()
    merged = tmp_path / "merged"
    subprocess.run(
        [*command, f"--merge={run},{run}", f"--output_dir={merged}"],
        cwd=_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    # The same seed twice: the same means, no spread, the same table.
    merged_table = (merged / "forgetting.md").read_text().splitlines()
    assert merged_table == table


@pytest.mark.slow
def test_untuned_and_adaptive_methods_each_train_their_own_model(
    tmp_path, monkeypatch
):
    made = []
    sft_model = keras_sft.SFTModel

    def recording(student, **kwargs):
        made.append(kwargs["lambda_"])
        return sft_model(student, **kwargs)

    monkeypatch.setattr(keras_sft, "SFTModel", recording)
    methods = (
        "SFT defaults",
        "SFT defaults on anchors",
        "SFT adaptive 0.5",
        "SFT adaptive 0.5 on anchors",
    )
    rows, sweep = forgetting_benchmark.run_benchmark(
        output_dir=str(tmp_path),
        shifts=("invert",),
        methods=methods,
        seeds=(0,),
        config=TrainingConfig(epochs=1, verbose=0),
        pretrain_epochs=1,
    )
    assert [(row["method"], row["strength"]) for row in rows] == [
        ("SFT defaults", 0.05),
        ("SFT defaults on anchors", 0.05),
        ("SFT adaptive 0.5", 0.5),
        ("SFT adaptive 0.5 on anchors", 0.5),
    ]
    # Four fits: the anchors and the adaptive lambda_ are part of the key.
    assert made[:2] == [0.05, 0.05]
    for adaptive in made[2:]:
        assert isinstance(adaptive, keras_sft.AdaptiveLambda)
        # One update per epoch of the new data, in batches of 32.
        assert adaptive.update_freq == 8
        assert adaptive.target_distill_loss == 0.5
    assert len(made) == 4
    # Fixed values on the new inputs alone in the sweep.
    assert [(row["distance"], row["lambda"]) for row in sweep] == [
        ("mse", 0.05)
    ]
