import keras
import numpy as np
import pytest

from keras_sft.select_lambda import LambdaScore
from keras_sft.select_lambda import choose_lambda
from keras_sft.select_lambda import select_lambda
from tests import helpers


def _scores(rows):
    return [LambdaScore(lam, new, 0.0, old) for lam, new, old in rows]


def test_rule_prefers_retained_within_tolerance():
    scores = _scores([(0.0, 0.95, 0.30), (0.3, 0.94, 0.60), (1.0, 0.90, 0.80)])
    assert choose_lambda(scores, tolerance=0.02) == 0.3
    assert choose_lambda(scores, tolerance=0.05) == 1.0


def test_rule_breaks_retained_ties_with_larger_lambda():
    scores = _scores([(0.1, 0.95, 0.6), (0.3, 0.95, 0.6)])
    assert choose_lambda(scores, tolerance=0.0) == 0.3


def test_rule_without_retained_takes_largest_lambda_within_tolerance():
    scores = _scores([(0.0, 0.95, None), (0.3, 0.94, None), (1.0, 0.9, None)])
    assert choose_lambda(scores, tolerance=0.02) == 0.3


def test_frozen_weights_give_the_pretrained_accuracies():
    # With a zero learning rate every run keeps the pretrained weights, so
    # the fold average (equal folds) is the pretrained accuracy on all data.
    x, y, _ = helpers.classification_data(n=30)
    old_x, old_y, _ = helpers.classification_data(n=20, seed=1)
    pretrained = helpers.mlp()
    before = [w.copy() for w in pretrained.get_weights()]
    selection = select_lambda(
        pretrained,
        x,
        y,
        lambdas=(0.0, 1.0),
        folds=3,
        retained=(old_x, old_y),
        epochs=1,
        optimizer=lambda: keras.optimizers.SGD(0.0),
    )
    logits = helpers.numpy_mlp_logits(before, x)
    old_logits = helpers.numpy_mlp_logits(before, old_x)
    for score in selection.scores:
        assert score.new_task_accuracy == pytest.approx(
            np.mean(logits.argmax(-1) == y)
        )
        assert score.retained_accuracy == pytest.approx(
            np.mean(old_logits.argmax(-1) == old_y)
        )
    # Equal scores: the largest lambda wins the tie.
    assert selection.lambda_ == 1.0
    assert "| 1 |" in selection.to_markdown()
    for a, b in zip(pretrained.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_no_candidate_stays_in_memory():
    # TensorFlow keeps every traced training step, and through it the
    # weights and optimizer state it reads, unless they are released.
    x, y, _ = helpers.classification_data(n=30)
    pretrained = helpers.mlp()
    before = helpers.live_traced_graphs()
    select_lambda(pretrained, x, y, lambdas=(0.0, 1.0), folds=2, epochs=1)
    assert helpers.live_traced_graphs() == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"folds": 1},
            r"argument `folds`. Expected an int >= 2. "
            r"Received: folds=1",
        ),
        ({"folds": 40}, r"at most one fold per sample. Received: folds=40"),
        ({"lambdas": ()}, r"argument `lambdas`. Expected a non-empty"),
        (
            {"lambdas": (0.1, -1)},
            r"argument `lambdas`. Expected a non-empty sequence of floats "
            r">= 0. Received: lambdas=\(0.1, -1\)",
        ),
        (
            {"tolerance": -0.1},
            r"argument `tolerance`. Expected a float >= 0. "
            r"Received: tolerance=-0.1",
        ),
        (
            {"epochs": 0},
            r"argument `epochs`. Expected an int > 0. Received: epochs=0",
        ),
        (
            {"batch_size": 2.0},
            r"argument `batch_size`. Expected an int > 0. "
            r"Received: batch_size=2.0",
        ),
        (
            {"distance": "l1"},
            r"argument `distance`. Expected one of \('mse', .*\). "
            r"Received: distance='l1'",
        ),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    x, y, _ = helpers.classification_data(n=30)
    with pytest.raises(ValueError, match=message):
        select_lambda(helpers.mlp(), x, y, **kwargs)


def test_mismatched_lengths_are_refused():
    x, y, _ = helpers.classification_data(n=30)
    with pytest.raises(ValueError, match=r"len\(x\)=30, len\(y\)=29"):
        select_lambda(helpers.mlp(), x, y[:-1])
