"""SFTLoss on tensors, against numpy, without a model."""

import keras
import numpy as np
import pytest

from keras_sft._sft_loss import SFTLoss
from keras_sft._sft_loss import task_log_names
from tests import helpers


def _cross_entropy(logits, labels):
    return -helpers.log_softmax(logits)[np.arange(len(labels)), labels]


def _weighted_mean(values, weights):
    # Keras's "sum_over_batch_size": divided by the number of values.
    return float((values * weights).sum() / len(values))


def _data(seed=0, n=8, classes=3):
    rng = np.random.default_rng(seed)
    student = rng.normal(size=(n, classes)).astype("float32")
    teacher = rng.normal(size=(n, classes)).astype("float32")
    labels = rng.integers(0, classes, size=n).astype("int32")
    weights = rng.uniform(0.1, 2.0, size=n).astype("float32")
    return student, teacher, labels, weights


def test_single_output_terms_match_numpy():
    student, teacher, labels, weights = _data()
    loss = SFTLoss(
        "squared_l2",
        task_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    total, terms = loss(labels, student, teacher, weights, lambda_=0.5)

    task = _weighted_mean(_cross_entropy(student, labels), weights)
    distill = _weighted_mean(((student - teacher) ** 2).sum(-1), weights)
    assert set(terms) == {"task_loss", "distill_loss"}
    assert float(terms["task_loss"]) == pytest.approx(task, rel=1e-5)
    assert float(terms["distill_loss"]) == pytest.approx(distill, rel=1e-5)
    assert float(total) == pytest.approx(task + 0.5 * distill, rel=1e-5)


def test_two_outputs_are_weighted_and_logged_per_output():
    student_a, teacher_a, labels_a, weights = _data(seed=1)
    student_b, teacher_b, labels_b, _ = _data(seed=2)
    loss = SFTLoss(
        "mse",
        loss={
            "a": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "b": None,
        },
        student_names=["a", "b"],
        teacher_names=["a", "b"],
        distill_weights={"b": 3.0},
    )
    regularization = [np.float32(0.25)]
    total, terms = loss(
        {"a": labels_a, "b": labels_b},
        {"a": student_a, "b": student_b},
        {"a": teacher_a, "b": teacher_b},
        weights,
        lambda_=2.0,
        regularization=regularization,
    )

    task_a = _weighted_mean(_cross_entropy(student_a, labels_a), weights)
    distill_a = _weighted_mean(((student_a - teacher_a) ** 2).mean(-1), weights)
    distill_b = _weighted_mean(((student_b - teacher_b) ** 2).mean(-1), weights)
    expected = {
        "task_loss": task_a,
        "distill_loss": distill_a + 3.0 * distill_b,
        "a_loss": task_a,
        "a_distill_loss": distill_a,
        "b_distill_loss": distill_b,
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(value, rel=1e-4), name
    assert float(total) == pytest.approx(
        task_a + 2.0 * (distill_a + 3.0 * distill_b) + 0.25, rel=1e-4
    )


def test_task_logs_take_keras_names_unless_another_log_has_them():
    names = ["label", "task", "distill", "label_distill", "conv_distill"]
    assert task_log_names(names, ["conv"]) == {
        "label": "label_loss",
        # `task_loss`, `distill_loss` and the distill terms of `label` and
        # of the feature `conv` are other logs.
        "task": "task_task_loss",
        "distill": "distill_task_loss",
        "label_distill": "label_distill_task_loss",
        "conv_distill": "conv_distill_task_loss",
    }
    assert task_log_names(["a", "conv_distill"], []) == {
        "a": "a_loss",
        "conv_distill": "conv_distill_loss",
    }
