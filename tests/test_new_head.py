import keras
import numpy as np
import pytest

import keras_sft
from tests import helpers


def test_new_head_shares_the_pretrained_layers():
    pretrained = helpers.mlp()
    student = keras_sft.add_head(pretrained, 4)
    assert student.output_names == ["dense_1", "new_head"]
    x, _, _ = helpers.classification_data(n=8)
    old, new = student.predict(x, verbose=0)
    np.testing.assert_array_equal(old, pretrained.predict(x, verbose=0))
    hidden = np.maximum(
        x @ pretrained.get_weights()[0] + pretrained.get_weights()[1], 0
    )
    kernel, bias = student.get_layer("new_head").get_weights()
    np.testing.assert_allclose(
        new, hidden @ kernel + bias, rtol=1e-5, atol=1e-6
    )


def test_feature_layer_can_be_named():
    pretrained = helpers.mlp()
    student = keras_sft.add_head(pretrained, 2, feature_layer="input_layer")
    assert student.get_layer("new_head").kernel.shape == (6, 2)


def _lwf(lambda_):
    x, _, _ = helpers.classification_data(n=64)
    new_y = np.random.default_rng(1).integers(0, 4, size=64)
    pretrained = helpers.mlp()
    before = pretrained.predict(x, verbose=0)
    student = keras_sft.add_head(pretrained, 4)
    old_head, head = student.output_names
    model = keras_sft.SFTModel(
        student, lambda_=lambda_, distance="mse", distill_outputs=[old_head]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss={
            head: keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        },
    )
    history = model.fit(x, {head: new_y}, epochs=20, verbose=0)
    drift = np.abs(student.predict(x, verbose=0)[0] - before).mean()
    return history.history, drift, old_head


def test_consistency_keeps_the_old_head_while_the_new_one_learns():
    _, plain_drift, _ = _lwf(0.0)
    lwf_logs, lwf_drift, old_head = _lwf(5.0)
    assert {"new_head_loss", f"{old_head}_distill_loss"} <= set(lwf_logs)
    # No task loss on the old head.
    assert f"{old_head}_loss" not in lwf_logs
    assert lwf_drift < 0.5 * plain_drift
    assert lwf_logs["new_head_loss"][-1] < lwf_logs["new_head_loss"][0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"num_classes": 0},
            r"argument `num_classes`. Expected an int > 0. "
            r"Received: num_classes=0",
        ),
        (
            {"num_classes": 3, "name": "dense"},
            r"argument `name`. Expected a "
            r"name that no layer of `model` has. Received: name='dense'",
        ),
        (
            {"num_classes": 3, "feature_layer": "nope"},
            r"Expected a "
            r"single-input, single-output Functional or Sequential model with "
            r"a layer 'nope'",
        ),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_sft.add_head(helpers.mlp(), **kwargs)


def test_unbuilt_model_is_refused():
    with pytest.raises(ValueError, match=r"Expected a built `keras.Model`"):
        keras_sft.add_head(keras.Sequential([keras.layers.Dense(2)]), 2)
