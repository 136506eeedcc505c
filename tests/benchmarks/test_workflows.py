"""benchmarks.workflows: its checks, its runner and its binary, a few fast
workflows, and (slow) the whole registry."""

import numpy as np
import pytest

from benchmarks import workflows
from tests import helpers

# The workflows where SFTModel still differs from the plain model, each
# with what differs (the benchmark's own line says by how much).
_KNOWN = {
    "legacy_h5": "the legacy HDF5 format cannot save the wrapper: "
    "refused with one ValueError naming model.student.save",
}

_FAST = (
    "fit_arrays",
    "evaluate",
    "on_batch",
    "save_load_weights",
    "full_disk",
    "bad_labels_out_of_range",
)


def test_registry_covers_issue_24_and_more():
    assert len(workflows.WORKFLOWS) >= 60
    assert any(w.aside for w in workflows.WORKFLOWS.values())
    assert all(w.summary for w in workflows.WORKFLOWS.values())


def test_close_reports_the_largest_gap():
    check = workflows.Check()
    assert check.close("same", [1.0, float("nan")], [1.0, float("nan")])
    assert not check.close("weights", [[1.0, 2.0]], [[1.0, 2.5]])
    assert not check.close("shapes", np.ones(1), np.ones((1, 1)))
    assert not check.close("count", [1.0, 2.0], [1.0])
    assert check.differences == [
        "weights: off by up to 0.5",
        "shapes: shape (1,) != (1, 1)",
        "count: 2 arrays against 1",
    ]


def test_history_names_the_missing_logs():
    check = workflows.Check()
    check.history({"loss": [1.0], "acc": [0.5]}, {"loss": [1.0]})
    assert check.differences == ["logs: SFTModel lacks ['acc']"]


def test_run_reports_fail_and_error(monkeypatch, tmp_path):
    def differs(check, directory):
        check.that("thing", False, "detail")

    def raises(check, directory):
        raise RuntimeError("broken\nsecond line")

    for function in (differs, raises):
        monkeypatch.setitem(
            workflows.WORKFLOWS,
            function.__name__,
            workflows.Workflow(function.__name__, function, True, ""),
        )
    assert workflows.run("differs", str(tmp_path))[:2] == (
        "fail",
        "thing: detail",
    )
    assert workflows.run("raises", str(tmp_path))[:2] == (
        "error",
        "RuntimeError: broken",
    )


@pytest.mark.parametrize("name", _FAST)
def test_fast_workflow_passes(name, tmp_path):
    status, detail, _ = workflows.run(name, str(tmp_path))
    assert (status, detail) == ("pass", "")


@pytest.mark.slow
def test_binary_lists_and_runs_workflows():
    result = helpers.run_binary(
        "benchmarks.workflows", "--workflows=predict,summary"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "logical CPUs" in lines[0]
    assert lines[3].startswith("| predict | pass |")
    assert lines[4].startswith("| summary | pass |")
    assert lines[-1].startswith("2 workflows: 2 pass, 0 fail, 0 error in ")


def _marked(name):
    if name in _KNOWN:
        return pytest.param(
            name, marks=pytest.mark.xfail(reason=_KNOWN[name], strict=True)
        )
    return name


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", [_marked(n) for n in workflows.WORKFLOWS])
def test_every_workflow_behaves_as_the_plain_model(name, tmp_path):
    status, detail, _ = workflows.run(name, str(tmp_path))
    assert (status, detail) == ("pass", "")
