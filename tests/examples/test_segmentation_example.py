import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from examples.lib import segmentation_experiment
from examples.lib.training_config import TrainingConfig


def _numpy_quality(logits, masks, classes):
    """Mean IoU over classes present in labels or predictions, pixel acc."""
    predicted = logits.argmax(-1).ravel()
    truth = masks.ravel()
    ious = []
    for c in range(classes):
        union = np.logical_or(predicted == c, truth == c).sum()
        if union:
            ious.append(
                np.logical_and(predicted == c, truth == c).sum() / union
            )
    return np.mean(ious), (predicted == truth).mean()


def test_segmenter_gives_per_pixel_logits():
    model = segmentation_experiment.build_segmenter((12, 10, 1), 4)
    assert model.output_shape == (None, 12, 10, 4)


def test_segmentation_quality_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(10, 8, 8, 1)).astype("float32")
    masks = rng.integers(0, 3, size=(10, 8, 8)).astype("int32")
    model = segmentation_experiment.build_segmenter((8, 8, 1), 3)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(4)
    quality = segmentation_experiment.segmentation_quality(model, dataset, 3)
    mean_iou, accuracy = _numpy_quality(
        model.predict(images, verbose=0), masks, 3
    )
    assert quality["mean_iou"] == pytest.approx(mean_iou, rel=1e-5)
    assert quality["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-5)


def _check_rows(rows, lambdas):
    methods = [row["method"] for row in rows]
    assert methods == ["pretrained", "plain fine-tuning (lambda=0)"] + [
        f"SFT (lambda={weight:g})" for weight in lambdas
    ]
    for row in rows:
        for key, value in row.items():
            if key != "method":
                assert 0.0 <= value <= 1.0, key
    table = segmentation_experiment.format_table(rows)
    assert len(table.splitlines()) == 2 + len(rows)


def test_digit_experiment_runs():
    tasks = segmentation_experiment.digit_tasks(image_size=10)
    rows = segmentation_experiment.run_experiment(
        tasks,
        lambdas=(0.5,),
        pretrain_epochs=1,
        config=TrainingConfig(epochs=1, batch_size=64, learning_rate=3e-3),
    )
    _check_rows(rows, [0.5])


def test_pet_experiment_runs_on_mock_data():
    # Enough mock examples that each split holds cats and dogs.
    with tfds.testing.mock_data(num_examples=16):
        tasks = segmentation_experiment.pet_tasks(image_size=8)
        rows = segmentation_experiment.run_experiment(
            tasks,
            lambdas=(1.0,),
            pretrain_epochs=1,
            config=TrainingConfig(epochs=1, batch_size=4, learning_rate=3e-3),
            distance="kl",
        )
    _check_rows(rows, [1.0])


def _binary(*args):
    return subprocess.run(
        [sys.executable, "-m", "examples.segmentation", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_binary_refuses_stray_arguments_and_bad_lambdas():
    stray = _binary("extra")
    assert stray.returncode != 0
    assert "Unexpected arguments: ['extra']" in stray.stderr
    bad = _binary("--lambdas=0.1,-1")
    assert bad.returncode != 0
    assert "Expected a comma-separated list of floats > 0" in bad.stderr


@pytest.mark.slow
def test_binary_logs_the_table():
    run = _binary(
        "--pretrain_epochs=1",
        "--epochs=1",
        "--lambdas=0.1",
        "--image_size=10",
        "--logtostderr",
    )
    assert run.returncode == 0, run.stderr
    assert "| SFT (lambda=0.1) |" in run.stderr
