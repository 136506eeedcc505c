"""The new-head experiment of the demo (Learning without Forgetting)."""

import pytest
import tensorflow as tf

from benchmarks.experiments import new_head_experiment
from examples.lib.training_config import TrainingConfig


@pytest.mark.slow
def test_new_head_experiment_rows():
    rows = new_head_experiment.run_new_head(
        lambdas=[1.0],
        strategy=tf.distribute.get_strategy(),
        config=TrainingConfig(epochs=2, learning_rate=1e-2),
        pretrain_epochs=2,
    )
    assert [row["model"] for row in rows] == [
        "pretrained (old head only)",
        "plain fine-tuning",
        "SFT (LwF)",
    ]
    assert rows[0]["new"] is None
    assert all(0 <= row["old"] <= 1 for row in rows)
    table = new_head_experiment.markdown_table(rows).splitlines()
    assert table[2].startswith("| pretrained (old head only) | - |")


def test_write_table_writes_and_prints_it(tmp_path, capsys):
    rows = [
        {"model": "pretrained (old head only)", "lambda": None},
        {"model": "SFT (LwF)", "lambda": 0.1},
    ]
    rows[0].update(old=0.9, new=None)
    rows[1].update(old=0.8, new=0.75)
    new_head_experiment.write_table(rows, str(tmp_path))
    table = (tmp_path / "new_head.md").read_text()
    assert table == new_head_experiment.markdown_table(rows)
    assert "| SFT (LwF) | 0.1 | 80.0 | 75.0 |" in table
    captured = capsys.readouterr()
    assert table in captured.out
    assert captured.err == ""
