import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_sft
from benchmarks.experiments import segmentation_data
from benchmarks.experiments import segmentation_experiment
from examples.lib.training_config import TrainingConfig
from tests import helpers

TINY = TrainingConfig(epochs=1, batch_size=64, learning_rate=3e-3)


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


def test_segmentation_quality_scores_the_given_output():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(6, 8, 8, 1)).astype("float32")
    masks = rng.integers(0, 4, size=(6, 8, 8)).astype("int32")
    single = segmentation_experiment.build_segmenter((8, 8, 1), 3)
    model = keras_sft.add_head(single, 4)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(4)
    quality = segmentation_experiment.segmentation_quality(
        model, dataset, 4, output=1
    )
    mean_iou, accuracy = _numpy_quality(
        model.predict(images, verbose=0)[1], masks, 4
    )
    assert quality["mean_iou"] == pytest.approx(mean_iou, rel=1e-5)
    assert quality["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-5)


def _arrays(dataset):
    images, masks = zip(*dataset.as_numpy_iterator(), strict=True)
    return np.stack(images), np.stack(masks)


def test_shared_head_tasks_put_new_digits_in_the_pretrained_head():
    tasks = segmentation_experiment.digit_tasks(image_size=10)
    assert tasks["classes"] == 11
    assert tasks["new_head_classes"] is None
    _, old_masks = _arrays(tasks["old_train"])
    _, new_masks = _arrays(tasks["new_train"])
    assert set(np.unique(old_masks)) == {0, 1, 2, 3, 4, 5}
    assert set(np.unique(new_masks)) == {0, 6, 7, 8, 9, 10}


def test_new_head_tasks_count_the_new_digits_from_one():
    shared = segmentation_experiment.digit_tasks(image_size=10)
    tasks = segmentation_experiment.digit_tasks(
        image_size=10, scenario="new_head"
    )
    assert (tasks["classes"], tasks["new_head_classes"]) == (6, 6)
    for split in ("train", "test"):
        images, masks = _arrays(tasks[f"new_{split}"])
        shared_images, shared_masks = _arrays(shared[f"new_{split}"])
        np.testing.assert_array_equal(images, shared_images)
        np.testing.assert_array_equal(
            masks, np.where(shared_masks > 0, shared_masks - 5, 0)
        )
        np.testing.assert_array_equal(
            _arrays(tasks[f"old_{split}"])[1],
            _arrays(shared[f"old_{split}"])[1],
        )


def test_new_domain_tasks_invert_the_old_scenes():
    tasks = segmentation_experiment.digit_tasks(
        image_size=10, scenario="new_domain"
    )
    assert (tasks["classes"], tasks["new_head_classes"]) == (6, None)
    all_images, _ = segmentation_data.digit_scenes(
        segmentation_experiment.OLD_DIGITS, image_size=10
    )
    for split in ("train", "test"):
        old_images, old_masks = _arrays(tasks[f"old_{split}"])
        new_images, new_masks = _arrays(tasks[f"new_{split}"])
        np.testing.assert_allclose(new_images, 1.0 - old_images, atol=1e-6)
        np.testing.assert_array_equal(new_masks, old_masks)
    # The two splits hold every scene once.
    train, _ = _arrays(tasks["old_train"])
    test, _ = _arrays(tasks["old_test"])
    assert len(train) + len(test) == len(all_images)


def test_digit_tasks_refuse_an_unknown_scenario():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `scenario`. Expected one of "
        r"\('shared_head', 'new_head', 'new_domain'\). "
        r"Received: scenario='new_classes'",
    ):
        segmentation_experiment.digit_tasks(scenario="new_classes")


def test_tasks_refuse_an_unknown_dataset():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for flag --dataset. Expected one of "
        r"\('digits', 'oxford_iiit_pet'\) \(old task 0-4 and new task 5-9 of "
        r"digit scenes, or cats and dogs\). Received: --dataset=mnist",
    ):
        segmentation_experiment.tasks("mnist", scenario="shared_head")


def test_tasks_of_the_digits_are_their_digit_tasks():
    tasks = segmentation_experiment.tasks("digits", scenario="new_head")
    expected = segmentation_experiment.digit_tasks(
        image_size=16, scenario="new_head"
    )
    assert tasks["input_shape"] == expected["input_shape"]
    assert tasks["input_shape"][:2] == (16, 16)
    np.testing.assert_array_equal(
        _arrays(tasks["new_train"])[1], _arrays(expected["new_train"])[1]
    )


def _pretrained(tasks):
    return segmentation_experiment.build_segmenter(
        tasks["input_shape"], tasks["classes"]
    )


def test_new_head_student_distills_the_old_head_alone():
    tasks = segmentation_experiment.digit_tasks(
        image_size=10, scenario="new_head"
    )
    pretrained = _pretrained(tasks)
    model = segmentation_experiment.fine_tuning_model(
        pretrained, tasks, lambda_=0.5, distance="kl"
    )
    assert model.student.output_names == [
        "segmentation",
        segmentation_experiment.NEW_HEAD,
    ]
    assert [tuple(o.shape) for o in model.student.outputs] == [
        (None, 10, 10, 6),
        (None, 10, 10, 6),
    ]
    assert model.distill_outputs == ["segmentation"]
    assert (model.lambda_, model.distance) == (0.5, "kl")
    # The copy is fine-tuned: the pretrained model keeps one output.
    assert len(pretrained.outputs) == 1


def test_new_head_consistency_ignores_the_new_head():
    tasks = segmentation_experiment.digit_tasks(
        image_size=10, scenario="new_head"
    )
    model = segmentation_experiment.fine_tuning_model(
        _pretrained(tasks), tasks, lambda_=1.0
    )
    model.compile(
        loss={
            segmentation_experiment.NEW_HEAD: (
                keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            )
        }
    )
    images, masks = _arrays(tasks["new_train"].take(4))
    head = model.student.get_layer(segmentation_experiment.NEW_HEAD)
    head.kernel.assign(head.kernel + 1.0)
    logs = model.evaluate(
        images,
        {segmentation_experiment.NEW_HEAD: masks},
        verbose=0,
        return_dict=True,
    )
    # Student and teacher differ in the new head alone.
    assert logs["distill_loss"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("scenario", ["shared_head", "new_domain"])
def test_one_head_student_distills_every_output(scenario):
    tasks = segmentation_experiment.digit_tasks(
        image_size=10, scenario=scenario
    )
    model = segmentation_experiment.fine_tuning_model(
        _pretrained(tasks), tasks, lambda_=0.1, l2_sp_alpha=0.01
    )
    assert model.student.output_shape == (None, 10, 10, tasks["classes"])
    assert model.distill_outputs is None
    # L2-SP regularises every pretrained weight.
    assert len(model.student.losses) == len(model.student.trainable_weights)


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


@pytest.mark.slow
def test_digit_experiment_runs():
    tasks = segmentation_experiment.digit_tasks(image_size=10)
    rows = segmentation_experiment.run_experiment(
        tasks,
        lambdas=(0.5,),
        pretrain_epochs=1,
        config=TrainingConfig(epochs=1, batch_size=64, learning_rate=3e-3),
    )
    _check_rows(rows, [0.5])


@pytest.mark.slow
def test_new_head_experiment_has_rows_for_l2_sp_and_anchors():
    tasks = segmentation_experiment.digit_tasks(
        image_size=10, scenario="new_head"
    )
    rows = segmentation_experiment.run_experiment(
        tasks,
        lambdas=(0.5,),
        pretrain_epochs=1,
        config=TINY,
        l2_sp_alphas=(0.01,),
        anchor_lambdas=(0.3,),
        anchor_count=20,
    )
    assert [row["method"] for row in rows] == [
        "pretrained",
        "plain fine-tuning (lambda=0)",
        "SFT (lambda=0.5)",
        "L2-SP (alpha=0.01)",
        "SFT, 20 anchors (lambda=0.3)",
    ]
    # The pretrained model has no head for the new task.
    assert rows[0]["new_mean_iou"] is None
    for row in rows[1:]:
        for key, value in row.items():
            if key != "method":
                assert 0.0 <= value <= 1.0, key
    table = segmentation_experiment.format_table(rows).splitlines()
    assert table[2].endswith("| - | - |")
    assert len(table) == 2 + len(rows)


@pytest.mark.slow
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
    return helpers.run_binary("examples.segmentation", *args)


@pytest.mark.slow
def test_binary_refuses_stray_arguments_and_bad_lambdas():
    stray = _binary("extra")
    assert stray.returncode != 0
    assert "Unexpected arguments: ['extra']" in stray.stderr
    bad = _binary("--lambdas=0.1,-1")
    assert bad.returncode != 0
    assert "Expected a comma-separated list of floats > 0" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["shared_head", "new_head", "new_domain"])
def test_binary_runs_each_scenario(scenario):
    run = _binary(
        f"--scenario={scenario}",
        "--pretrain_epochs=1",
        "--epochs=1",
        "--lambdas=0.1",
        "--l2_sp_alphas=0.01",
        "--anchor_lambdas=0.3",
        "--anchor_count=16",
        "--image_size=10",
    )
    assert run.returncode == 0, run.stderr
    assert f"Segmentation, digits, {scenario}:" in run.stdout
    for method in ("SFT (lambda=0.1)", "L2-SP (alpha=0.01)"):
        assert f"| {method} |" in run.stdout
    assert "| SFT, 16 anchors (lambda=0.3) |" in run.stdout


@pytest.mark.slow
def test_binary_prints_the_table():
    run = _binary(
        "--pretrain_epochs=1",
        "--epochs=1",
        "--lambdas=0.1",
        "--image_size=10",
    )
    assert run.returncode == 0, run.stderr
    assert "| SFT (lambda=0.1) |" in run.stdout
    assert "[3/7] SFT (lambda=0.1) ..." in run.stderr
