import keras
import numpy as np
import pytest

from keras_sft.l2_sp import apply_l2_sp
from keras_sft.l2_sp import remove_l2_sp
from tests import helpers


def test_penalty_is_distance_to_pretrained_weights():
    model = helpers.mlp()
    pretrained = [w.copy() for w in model.get_weights()]
    apply_l2_sp(model, alpha=0.1)
    moved = [w + 0.5 for w in pretrained]
    model.set_weights(moved)
    expected = 0.1 * sum(
        np.sum((m - p) ** 2) for m, p in zip(moved, pretrained, strict=True)
    )
    penalty = float(sum(keras.ops.convert_to_numpy(v) for v in model.losses))
    assert penalty == pytest.approx(expected, rel=1e-5)


def test_penalty_pulls_training_towards_pretrained_weights():
    x, y, _ = helpers.classification_data(n=64)
    distances = {}
    for alpha in (0.0, 1.0):
        keras.utils.set_random_seed(0)
        model = helpers.mlp()
        pretrained = [w.copy() for w in model.get_weights()]
        apply_l2_sp(model, alpha=alpha)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, epochs=5, verbose=0)
        distances[alpha] = sum(
            np.sum((a - b) ** 2)
            for a, b in zip(model.get_weights(), pretrained, strict=True)
        )
    assert distances[1.0] < 0.5 * distances[0.0]


def test_remove_restores_no_penalty():
    model = helpers.mlp()
    apply_l2_sp(model, alpha=0.1)
    remove_l2_sp(model)
    assert model.losses == []


@pytest.mark.parametrize("alpha", [-0.1, "1", float("inf")])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `alpha`. Expected a float >= 0. "
        rf"Received: alpha={alpha!r}",
    ):
        apply_l2_sp(helpers.mlp(), alpha=alpha)
