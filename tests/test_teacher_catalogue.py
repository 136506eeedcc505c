"""`clone_teacher` over models whose state goes beyond their weights.

Each entry builds a model and a batch that exercises its state (strings
for lookups, values away from the initial statistics for adapted layers).
The teacher must predict bit-identically to the original, have no
trainable weights, share no variable with it, and stay as it was while
the original trains.
"""

import keras
import numpy as np
import pytest

from keras_sft import clone_teacher

# Keras's `predict` takes strings as an object array, not a NumPy `str_` one.
_WORDS = np.array(
    [
        "the cat sat",
        "a dog ran far",
        "the dog sat on the mat",
        "cats and dogs",
        "an unknown word here",
        "the the the",
    ],
    dtype=object,
)


def _head(features, outputs=3):
    """A trainable float head, so that the original can be trained."""
    hidden = keras.layers.Dense(
        8, activation="relu", kernel_initializer=keras.initializers.Ones()
    )(features)
    return keras.layers.Dense(
        outputs, kernel_initializer=keras.initializers.GlorotUniform(0)
    )(hidden)


def _floats(n=6, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return (5.0 + 3.0 * rng.normal(size=(n, dim))).astype("float32")


def _normalization():
    x = _floats()
    layer = keras.layers.Normalization()
    layer.adapt(x)
    inputs = keras.Input((4,))
    return keras.Model(inputs, _head(layer(inputs))), x


def _discretization():
    x = _floats()
    layer = keras.layers.Discretization(num_bins=4, output_mode="one_hot")
    layer.adapt(x[:, 0])
    inputs = keras.Input(())
    return keras.Model(inputs, _head(layer(inputs))), x[:, 0]


def _string_lookup():
    words = np.array(
        ["cat", "dog", "mat", "sat", "dog", "fish", "owl"], dtype=object
    )
    layer = keras.layers.StringLookup(output_mode="one_hot")
    layer.adapt(words[:5])
    inputs = keras.Input((), dtype="string")
    return keras.Model(inputs, _head(layer(inputs))), words


def _integer_lookup():
    values = np.array([7, 42, 42, 3, 1000, 5, 11], "int64")
    layer = keras.layers.IntegerLookup(output_mode="multi_hot")
    layer.adapt(values[:5])
    inputs = keras.Input((1,), dtype="int64")
    return keras.Model(inputs, _head(layer(inputs))), values[:, None]


def _text_vectorization():
    layer = keras.layers.TextVectorization(max_tokens=8, output_mode="tf_idf")
    layer.adapt(_WORDS[:4])
    inputs = keras.Input((), dtype="string")
    return keras.Model(inputs, _head(layer(inputs))), _WORDS


def _text_vectorization_sequence():
    layer = keras.layers.TextVectorization(
        max_tokens=10, output_sequence_length=5
    )
    layer.adapt(_WORDS[:4])
    inputs = keras.Input((), dtype="string")
    tokens = keras.layers.Embedding(10, 4)(layer(inputs))
    pooled = keras.layers.GlobalAveragePooling1D()(tokens)
    return keras.Model(inputs, _head(pooled)), _WORDS


def _nested_with_batch_norm():
    x = _floats()
    inner_inputs = keras.Input((4,))
    inner = keras.Model(
        inner_inputs,
        keras.layers.BatchNormalization()(keras.layers.Dense(6)(inner_inputs)),
        name="inner",
    )
    # Move the moving statistics away from their initial values.
    inner(x, training=True)
    inputs = keras.Input((4,))
    return keras.Model(inputs, _head(inner(inputs))), x


def _mobilenet():
    model = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3),
        alpha=0.75,
        minimalistic=True,
        weights=None,
        classes=3,
        classifier_activation=None,
    )
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3))
    return model, x.astype("float32")


@keras.saving.register_keras_serializable(package="keras_sft_tests")
class _Offset(keras.layers.Layer):
    """A registered custom layer with a non-trainable variable."""

    def __init__(self, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def build(self, input_shape):
        self.shift = self.add_weight(
            shape=input_shape[-1:], initializer="zeros", trainable=False
        )

    def call(self, inputs):
        return inputs + self.shift + self.offset

    def get_config(self):
        return {**super().get_config(), "offset": self.offset}


def _registered_custom_layer():
    x = _floats()
    layer = _Offset(offset=1.5)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, _head(layer(inputs)))
    layer.shift.assign([1.0, -2.0, 3.0, -4.0])
    return model, x


class _Unregistered(keras.layers.Layer):
    def __init__(self, power=2.0, **kwargs):
        super().__init__(**kwargs)
        self.power = power

    def call(self, inputs):
        return keras.ops.abs(inputs) ** self.power

    def get_config(self):
        return {**super().get_config(), "power": self.power}


def _unregistered_custom_layer():
    inputs = keras.Input((4,))
    return keras.Model(inputs, _head(_Unregistered(0.5)(inputs))), _floats()


@keras.saving.register_keras_serializable(package="keras_sft_tests")
class _Standardized(keras.Model):
    """A subclassed model with `get_config` and an adapted layer inside."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.normalization = keras.layers.Normalization()
        self.dense = keras.layers.Dense(units)

    def call(self, inputs):
        return self.dense(self.normalization(inputs))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _subclassed_with_adapted_layer():
    x = _floats()
    # A name of Keras's own making, "_standardized", is not a valid name
    # scope for `predict`.
    model = _Standardized(units=5, name="standardized")
    model.normalization.adapt(x)
    model(x)
    return model, x


def _lambda_layer():
    inputs = keras.Input((4,))
    squared = keras.layers.Lambda(lambda t: t * t + 1.0)(inputs)
    return keras.Model(inputs, _head(squared)), _floats()


def _offset(t):
    """A module-level helper that a `Lambda` function calls."""
    return t + 1.0


def _lambda_layer_with_globals():
    inputs = keras.Input((4,))
    # The function reads the module's globals (`keras`, `_offset`), which
    # Keras's reloaded bytecode would not see.
    squared = keras.layers.Lambda(
        lambda t: _offset(keras.ops.square(t)), output_shape=(4,)
    )(inputs)
    return keras.Model(inputs, _head(squared)), _floats()


def _lambda_layer_with_globals_no_shape():
    inputs = keras.Input((4,))
    # Without `output_shape`, rebuilding the model calls the function to
    # infer it: the copy must not need the module's globals for that.
    squared = keras.layers.Lambda(lambda t: _offset(keras.ops.square(t)))(
        inputs
    )
    return keras.Model(inputs, _head(squared)), _floats()


def _mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        x = _floats()
        layer = keras.layers.Normalization()
        layer.adapt(x)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, _head(layer(inputs)))
    finally:
        keras.config.set_dtype_policy("float32")
    return model, x


_CATALOGUE = {
    "normalization": _normalization,
    "discretization": _discretization,
    "string_lookup": _string_lookup,
    "integer_lookup": _integer_lookup,
    "text_vectorization": _text_vectorization,
    "text_vectorization_sequence": _text_vectorization_sequence,
    "nested_with_batch_norm": _nested_with_batch_norm,
    "mobilenet_v3_small": _mobilenet,
    "lambda_layer_with_globals_no_shape": _lambda_layer_with_globals_no_shape,
    "registered_custom_layer": _registered_custom_layer,
    "unregistered_custom_layer": _unregistered_custom_layer,
    "subclassed_with_adapted_layer": _subclassed_with_adapted_layer,
    "lambda_layer": _lambda_layer,
    "lambda_layer_with_globals": _lambda_layer_with_globals,
    "mixed_precision": _mixed_precision,
}


def _policies(model):
    # Keras does not save an `InputLayer`'s policy: its `dtype` is all that
    # matters, and the weight dtypes pin it.
    return [
        layer.dtype_policy.name
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def _predict(model, x):
    # Eager calls: tracing `predict` and `fit` for each model would
    # dominate the run time, and both models go through the same path.
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.mark.parametrize("name", sorted(_CATALOGUE))
def test_teacher_predicts_as_the_original_and_stays_frozen(name):
    model, x = _CATALOGUE[name]()
    before = _predict(model, x)
    teacher = clone_teacher(model)

    assert type(teacher) is type(model)
    assert not teacher.trainable
    assert teacher.trainable_weights == []
    assert len(teacher.weights) == len(model.weights)
    assert {id(v) for v in teacher.weights}.isdisjoint(
        id(v) for v in model.weights
    )
    assert [v.dtype for v in teacher.weights] == [
        v.dtype for v in model.weights
    ]
    assert _policies(teacher) == _policies(model)
    np.testing.assert_array_equal(_predict(teacher, x), before)

    optimizer = keras.optimizers.SGD(0.01)
    if model.dtype_policy.name == "mixed_float16":
        # Keras's default loss scale overflows on the first steps, which
        # then update nothing.
        optimizer = keras.optimizers.LossScaleOptimizer(
            optimizer, initial_scale=1.0
        )
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=True)
    model.fit(x, np.zeros_like(before), epochs=1, verbose=0)
    # Training moved the original, so the check below is not vacuous.
    assert not np.array_equal(_predict(model, x), before)
    np.testing.assert_array_equal(_predict(teacher, x), before)


def test_mixed_precision_teacher_keeps_its_policy():
    model, x = _mixed_precision()
    teacher = clone_teacher(model)
    assert teacher.layers[-1].dtype_policy.name == "mixed_float16"
    assert _predict(teacher, x).dtype == np.float16


def test_lookup_teacher_has_the_adapted_vocabulary():
    model, _ = _string_lookup()
    teacher = clone_teacher(model)
    vocabulary = teacher.layers[1].get_vocabulary()
    assert sorted(vocabulary) == ["[UNK]", "cat", "dog", "mat", "sat"]
    assert vocabulary == model.layers[1].get_vocabulary()
