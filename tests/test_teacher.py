import keras
import numpy as np
import pytest

from keras_sft import clone_teacher
from tests import helpers


def _assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_functional_clone_is_frozen_and_identical():
    model = helpers.mlp()
    teacher = clone_teacher(model)
    assert teacher is not model
    assert not teacher.trainable
    assert teacher.trainable_weights == []
    _assert_same_weights(model, teacher)


def test_sequential_clone_copies_batchnorm_statistics():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )
    # Move the moving statistics away from their initial values.
    model(np.full((8, 4), 3.0, "float32"), training=True)
    teacher = clone_teacher(model)
    _assert_same_weights(model, teacher)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_array_equal(
        teacher.predict(x, verbose=0), model.predict(x, verbose=0)
    )


@keras.saving.register_keras_serializable(package="keras_sft_tests")
class _Subclassed(keras.Model):
    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units)

    def call(self, inputs):
        return self.dense(inputs)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_subclassed_clone_is_identical():
    model = _Subclassed()
    model(np.zeros((1, 4), "float32"))
    teacher = clone_teacher(model)
    assert isinstance(teacher, _Subclassed)
    _assert_same_weights(model, teacher)


def test_clone_is_independent_of_later_changes():
    model = helpers.mlp()
    teacher = clone_teacher(model)
    before = [w.copy() for w in teacher.get_weights()]
    model.set_weights([w + 1.0 for w in model.get_weights()])
    for w, b in zip(teacher.get_weights(), before, strict=True):
        np.testing.assert_array_equal(w, b)


def test_not_a_model_is_refused():
    with pytest.raises(
        ValueError,
        match="Invalid value for argument `model`. Expected a `keras.Model`",
    ):
        clone_teacher(keras.layers.Dense(3))


def test_unbuilt_model_is_refused():
    with pytest.raises(ValueError, match="Expected a built model"):
        clone_teacher(_Subclassed())
