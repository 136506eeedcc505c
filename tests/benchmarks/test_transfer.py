"""benchmarks.transfer and benchmarks.families: the defaults' grid.

The reductions (medians, differences to plain, worst cases, targets) on
rows written by hand; the families' data on their shapes; one quick run
of the binary (slow)."""

import numpy as np
import pytest

from benchmarks import families
from benchmarks import transfer
from tests import helpers


def _row(family, shift, method, seed, retained, new, overall=None, **extra):
    overall = (retained + new) / 2 if overall is None else overall
    return dict(
        family=family,
        shift=shift,
        method=method,
        seed=seed,
        retained=retained,
        new=new,
        overall=overall,
        **extra,
    )


def _rows():
    """Two seeds of one family and shift: plain forgets 60 points."""
    rows = []
    for seed, (plain, sft) in enumerate(((30.0, 80.0), (40.0, 70.0))):
        rows += [
            _row(
                "mlp",
                "invert",
                "pretrained",
                seed,
                95.0,
                0.0,
                47.5,
                logit_scale=3.0,
            ),
            _row("mlp", "invert", "plain", seed, plain, 90.0),
            _row("mlp", "invert", "SFT defaults", seed, sft, 88.0),
            _row("mlp", "invert", "L2-SP 0.01", seed, plain + 5, 70.0),
        ]
    return rows


def test_medians_over_seeds():
    table = transfer.medians(_rows())
    assert table[("mlp", "invert", "plain")]["retained"] == 35.0
    assert table[("mlp", "invert", "SFT defaults")]["overall"] == (
        np.median([(80 + 88) / 2, (70 + 88) / 2])
    )
    assert table[("mlp", "invert", "pretrained")]["logit_scale"] == 3.0


def test_differences_pair_seeds():
    found = transfer.differences(_rows(), "SFT defaults")
    # Seed 0: (80 + 88) / 2 - (30 + 90) / 2; seed 1: (70 + 88) / 2 - 65.
    assert found == {
        ("mlp", "invert", 0): 24.0,
        ("mlp", "invert", 1): 14.0,
    }


def test_worst_cases_rank_by_the_worst_seed():
    ranked = transfer.worst_cases(_rows(), ["L2-SP 0.01", "SFT defaults"])
    assert [entry[0] for entry in ranked] == ["SFT defaults", "L2-SP 0.01"]
    method, worst, where, median = ranked[0]
    assert (worst, where, median) == (14.0, ("mlp", "invert", 1), 19.0)
    # L2-SP: (35 + 70) / 2 - (30 + 90) / 2 = -7.5 on both seeds.
    assert ranked[1][1] == -7.5


def test_worst_cases_keep_to_the_families_asked():
    assert transfer.worst_cases(_rows(), ["SFT defaults"], ["lm"]) == []


def test_choose_confirms_on_the_held_out_families():
    rows = _rows() + [
        dict(row, family="lm") for row in _rows() if row["seed"] == 0
    ]
    chosen, confirmation = transfer.choose(
        rows, ["L2-SP 0.01", "SFT defaults"], on=["mlp"], held_out=["lm"]
    )
    assert chosen[0] == "SFT defaults"
    assert confirmation[:3] == ("SFT defaults", 24.0, ("lm", "invert", 0))


def test_targets_met():
    assert transfer.check_targets(_rows(), "SFT defaults") == [
        ("mlp", "invert", True, "")
    ]


def test_targets_name_each_failure():
    (result,) = transfer.check_targets(_rows(), "L2-SP 0.01")
    family, shift, passed, reason = result
    assert not passed
    assert reason == (
        "overall 55.0 < plain 62.5 - 1; retained 40.0 < plain 35.0 + 15; "
        "new 70.0 < plain 90.0 - 5"
    )


def test_targets_without_forgetting_ask_only_overall():
    rows = [
        _row(
            row["family"],
            row["shift"],
            "plain",
            row["seed"],
            row["retained"] + 50,
            row["new"],
        )
        if row["method"] == "plain"
        else row
        for row in _rows()
    ]
    # Plain forgets 10 points now: only the overall target applies, and
    # SFT's overall falls short of plain's by more than a point.
    ((_, _, passed, reason),) = transfer.check_targets(rows, "SFT defaults")
    assert not passed
    assert reason.startswith("overall ")
    assert "retained" not in reason


def test_family_table_has_a_row_per_method():
    table = transfer.family_table(_rows(), "mlp")
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| shift | method |")
    assert lines[2].startswith("| invert | pretrained (logit std 3.0) |")
    assert lines[4] == (
        "| invert | SFT defaults | 75.0 | 88.0 | 81.5 | +19.0 | +14.0 |"
    )


def test_run_refuses_unknown_names():
    with pytest.raises(ValueError, match="Invalid value for argument `fam"):
        transfer.run(families=("resnet",))
    with pytest.raises(ValueError, match="argument `shifts`"):
        transfer.run(families=("mlp",), shifts=("blur",))


def test_text_windows_predict_the_next_character():
    old, tasks = families.tasks(families.FAMILIES["lm"], seed=0)
    x, y = old
    assert x.shape == y.shape == (8192, families.SEQUENCE_LENGTH)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    assert x.min() >= 0 and x.max() < families.VOCABULARY_SIZE
    assert set(tasks) == set(families.TEXT_SHIFTS)


def test_digit_tasks_keep_old_classes_out_of_the_new_data():
    old, tasks = families.tasks(families.FAMILIES["mlp"], seed=0)
    assert set(np.unique(old[1])) == set(range(10))
    for task in tasks.values():
        assert set(np.unique(task.train[1])) == set(range(5))
        assert set(np.unique(task.test_retained[1])) == set(range(5, 10))
        assert set(np.unique(task.test_new[1])) == set(range(5))


@pytest.mark.slow
def test_quick_run_prints_the_report(tmp_path):
    result = helpers.run_binary(
        "benchmarks.defaults",
        "--quick",
        "--families=mlp,lm",
        "--shifts=invert,rot13",
        "--seeds=0",
        "--methods=plain,SFT defaults",
        "--choose_on=mlp",
        "--held_out=lm",
        f"--output_dir={tmp_path}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| invert | SFT defaults |" in result.stdout
    assert "| rot13 | SFT defaults |" in result.stdout
    assert "Best worst case of SFT on mlp: SFT defaults" in result.stdout
    assert (tmp_path / "rows.json").exists()
    assert (tmp_path / "defaults.md").read_text() in result.stdout
