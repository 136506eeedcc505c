"""Tests for keras_sft._frozen_prefix: frozen layers computed once a step."""

import contextlib

import keras
import numpy as np
import pytest

import keras_sft
from keras_sft import _batch
from keras_sft import _teacher_outputs
from tests import helpers


def images(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 2)).astype("float32")
    return x, rng.integers(0, 3, size=n).astype("int32")


def frozen_mlp(*, dropout=False, sequential=False):
    """A Dense-BatchNorm backbone, frozen, under a trainable head."""
    layers = [
        keras.layers.Dense(8, activation="relu", name="frozen_dense"),
        *([keras.layers.Dropout(0.5, seed=0)] if dropout else []),
        keras.layers.BatchNormalization(name="frozen_bn"),
        keras.layers.Dense(3, name="head"),
    ]
    if sequential:
        model = keras.Sequential([keras.Input((6,)), *layers])
    else:
        inputs = keras.Input((6,))
        h = inputs
        for layer in layers:
            h = layer(h)
        model = keras.Model(inputs, h)
    bn = model.get_layer("frozen_bn")
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 8).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 8).astype("float32"))
    model.get_layer("frozen_dense").trainable = False
    bn.trainable = False
    return model


def seeded(build):
    """`build()` from the same seed each time."""
    keras.utils.set_random_seed(0)
    return build()


def split_of(model):
    """The split the next training step of `model` would use."""
    model._teacher_outputs.split_prefix()
    return model._teacher_outputs.shared_prefix()


def prefix_layers(model):
    return [
        layer.name
        for layer in split_of(model).prefix.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def train(build, x, y, *, shared, epochs=2, strategy=None):
    """Fits `SFTModel` of the student `seeded(build)` makes (in the
    strategy's scope); `shared=False` gives it an explicit teacher, which
    shares no weight and so no prefix. Returns the model, its history and
    its student's weights."""
    with strategy.scope() if strategy else contextlib.nullcontext():
        student = seeded(build)
        teacher = None if shared else keras_sft.clone_teacher(student)
        model = keras_sft.SFTModel(
            student, teacher, lambda_=0.5, cache_teacher=False
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    history = model.fit(
        x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0
    )
    assert (split_of(model) is not None) == shared
    return model, history.history, student.get_weights()


def assert_same_fit(build, x, y, **kwargs):
    """A fit through the shared prefix equals the fit without one."""
    initial = seeded(build).get_weights()
    _, logs, weights = train(build, x, y, shared=True, **kwargs)
    _, expected_logs, expected = train(build, x, y, shared=False, **kwargs)
    helpers.assert_same_trained_weights(weights, expected, initial)
    assert set(logs) == set(expected_logs)
    for key, values in expected_logs.items():
        np.testing.assert_allclose(logs[key], values, rtol=1e-5)


def test_frozen_backbone_is_computed_once_and_trains_alike():
    x, y = images()
    model = keras_sft.SFTModel(helpers.frozen_backbone_cnn())

    assert prefix_layers(model) == ["backbone"]
    assert [layer.name for layer in split_of(model).student_suffix.layers][
        1:
    ] == ["head"]
    assert_same_fit(helpers.frozen_backbone_cnn, x, y)


@pytest.mark.parametrize("sequential", [False, True])
def test_frozen_batch_norm_layers_share_and_train_alike(sequential):
    x, y, _ = helpers.classification_data()

    def build():
        return frozen_mlp(sequential=sequential)

    assert prefix_layers(keras_sft.SFTModel(build())) == [
        "frozen_dense",
        "frozen_bn",
    ]
    assert_same_fit(build, x, y)


def test_dropout_ends_the_prefix():
    model = keras_sft.SFTModel(frozen_mlp(dropout=True))

    assert prefix_layers(model) == ["frozen_dense"]


def test_trainable_batch_norm_ends_the_prefix():
    student = frozen_mlp()
    student.get_layer("frozen_bn").trainable = True

    assert prefix_layers(keras_sft.SFTModel(student)) == ["frozen_dense"]


@pytest.mark.parametrize("frozen", ["none", "all"])
def test_no_split_without_both_a_frozen_and_a_trained_part(frozen):
    student = frozen_mlp()
    for layer in student.layers:
        layer.trainable = frozen == "none"

    assert split_of(keras_sft.SFTModel(student)) is None


def test_fit_traces_its_step_through_the_split_made_before(monkeypatch):
    x, y = images()
    traced = []
    call = _teacher_outputs._SharedPrefix.__call__

    def record(self, *args, **kwargs):
        traced.append(self.split)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(_teacher_outputs._SharedPrefix, "__call__", record)
    model = keras_sft.SFTModel(helpers.frozen_backbone_cnn())
    model.compile(optimizer="sgd")
    outputs = model._teacher_outputs
    model.fit(x, y, batch_size=8, verbose=0)

    assert traced and all(s is outputs.shared_prefix() for s in traced)
    # Unfrozen and compiled again: the next step runs both models whole.
    traced.clear()
    model.student.get_layer("backbone").trainable = True
    model.compile(optimizer="sgd")
    model.fit(x, y, batch_size=8, verbose=0)
    assert not traced
    assert outputs.shared_prefix() is None


def test_a_step_traced_after_a_trainable_change_runs_whole(monkeypatch):
    x, y = images()
    model = keras_sft.SFTModel(helpers.frozen_backbone_cnn())
    model.compile(optimizer="sgd")
    model._teacher_outputs.split_prefix()
    assert model._teacher_outputs.shared_prefix() is not None

    model.student.get_layer("backbone").trainable = False
    model.student.get_layer("head").trainable = False
    assert model._teacher_outputs.shared_prefix() is None


def test_no_split_where_the_teacher_does_not_run_on_the_batch():
    model = keras_sft.SFTModel(frozen_mlp())

    cached = _batch.Batch(
        np.zeros((8, 6)), None, None, np.zeros((8, 3)), None, None
    )
    assert model._teacher_outputs.shared_prefix(cached) is None
    features = keras_sft.SFTModel(frozen_mlp(), distill_features=["head"])
    assert split_of(features) is None


def test_unfreezing_gives_a_teacher_equal_to_the_pretrained_model():
    x, y = images()
    pretrained = keras_sft.clone_teacher(seeded(helpers.frozen_backbone_cnn))
    expected_outputs = keras.ops.convert_to_numpy(pretrained(x))

    def fit_then_unfreeze(shared):
        model, first, _ = train(
            helpers.frozen_backbone_cnn, x, y, shared=shared, epochs=1
        )
        student = model.student
        student.get_layer("backbone").trainable = True
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        second = model.fit(
            x, y, batch_size=8, epochs=2, shuffle=False, verbose=0
        ).history
        assert split_of(model) is None
        return model, first, second, student.get_weights()

    model, first, second, weights = fit_then_unfreeze(shared=True)
    _, expected_first, expected_second, expected = fit_then_unfreeze(False)

    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.teacher(x)), expected_outputs
    )
    helpers.assert_same_trained_weights(
        weights, expected, pretrained.get_weights()
    )
    for logs, expected_logs in (
        (first, expected_first),
        (second, expected_second),
    ):
        for key, values in expected_logs.items():
            np.testing.assert_allclose(logs[key], values, rtol=1e-5)


def test_mirrored_fit_through_the_prefix_equals_one_device():
    x, y, _ = helpers.classification_data()

    def fit(strategy):
        _, logs, weights = train(
            frozen_mlp, x, y, shared=True, epochs=1, strategy=strategy
        )
        return weights, logs

    helpers.assert_mirrored_equals_one_device(
        fit, seeded(frozen_mlp).get_weights()
    )


def test_mixed_precision_fit_through_the_prefix_trains_alike():
    keras.config.set_dtype_policy("mixed_float16")
    x, y, _ = helpers.classification_data()

    initial = seeded(frozen_mlp).get_weights()
    _, logs, weights = train(frozen_mlp, x, y, shared=True)
    _, expected_logs, expected = train(frozen_mlp, x, y, shared=False)

    helpers.assert_same_trained_weights(weights, expected, initial, atol=1e-3)
    np.testing.assert_allclose(logs["loss"], expected_logs["loss"], rtol=1e-3)
