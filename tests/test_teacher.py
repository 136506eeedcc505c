import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from keras_sft import _shared_teacher
from keras_sft import clone_teacher
from keras_sft.teacher import cast_teacher
from keras_sft.teacher import copy_model
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


@keras.saving.register_keras_serializable(package="keras_sft_tests")
class _TwoLayers(keras.Model):
    def __init__(self, eager=False, name="two_layers", **kwargs):
        super().__init__(name=name, **kwargs)
        self.eager = eager
        self.first = keras.layers.Dense(3, name="first")
        self.second = keras.layers.Dense(2, name="second")

    def call(self, inputs):
        if self.eager:
            # Runs on concrete values alone, not on symbolic inputs.
            inputs = keras.ops.convert_to_numpy(inputs)
        return self.second(self.first(inputs))

    def get_config(self):
        return {**super().get_config(), "eager": self.eager}


def _built_by_build(**kwargs):
    model = _TwoLayers(**kwargs)
    with pytest.warns(UserWarning, match="unbuilt state"):
        model.build((None, 4))
    return model


def test_model_built_by_build_is_copied_with_the_weights_fit_gives():
    # `build(input_shape)` builds none of the layers; `fit` would at the
    # first batch, from initializers seeded when the layers were made.
    keras.utils.set_random_seed(0)
    model = _built_by_build()
    model.first.build((None, 4))
    kept = np.arange(12, dtype="float32").reshape(4, 3)
    model.first.kernel.assign(kept)
    keras.utils.set_random_seed(0)
    called = _TwoLayers()
    called.first.build((None, 4))
    called.first.kernel.assign(kept)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    called(x)

    teacher = clone_teacher(model)
    _assert_same_weights(model, called)
    _assert_same_weights(model, teacher)
    np.testing.assert_array_equal(
        teacher.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    sft = keras_sft.SFTModel(_built_by_build(), lambda_=0.5)
    assert sft.teacher.get_layer("second").built


def test_model_whose_layers_cannot_be_built_is_refused():
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `model`\. Expected a model whose "
        r"layers are built, so that its weights can be copied: call it on a "
        r"batch first \(`model\(x\)`; `model\.build\(input_shape\)` builds "
        r"none of the layers of a subclassed model\)\. Received: "
        r"model='two_layers' \(layers \['first', 'second'\] not built, "
        r"and its `call` cannot run on its input shape "
        r"\{'input_shape': \(None, 4\)\}\)$",
    ):
        keras_sft.SFTModel(_built_by_build(eager=True))


class _AutoConfig(keras.Model):
    """Relies on Keras's generated config, which holds the default units."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units)

    def call(self, inputs):
        return self.dense(inputs)


class _Scaled(keras.Model):
    """Keeps its arguments as attributes, without `get_config`."""

    def __init__(self, units=3, scale=1.0, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.scale = scale
        self.activation = activation
        self.hidden = keras.layers.Dense(units, activation=activation)
        self.logits = keras.layers.Dense(2)

    def call(self, inputs):
        return self.logits(self.scale * self.hidden(inputs))


class _Resolved(keras.Model):
    """Resolves a default of `None` in `__init__`, and keeps a value
    derived from an argument under another name."""

    def __init__(self, width=None, shift=0.0, **kwargs):
        super().__init__(**kwargs)
        self.width = width or 4
        self._offset = 2.0 * shift
        self.dense = keras.layers.Dense(self.width)

    def call(self, inputs):
        return self.dense(inputs + self._offset)


class _Holder(keras.Model):
    """Takes a layer, which no automatic config can hold."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def call(self, inputs):
        return self.layer(inputs)


class _NoArguments(keras.Model):
    """Takes no arguments: Keras's automatic config is complete."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


def _built(model):
    """`model`, called on a batch, and a batch to compare predictions on."""
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    model(x)
    return model, x


def test_kerass_generated_config_holds_the_defaults(tmp_path):
    # Keras 3.15's `Model.__new__` drops the arguments that
    # `Operation.__new__` would record: the config holds the defaults, and
    # Keras's own `.keras` round trip of a model built with others is wrong.
    model, x = _built(_Scaled(scale=2.0))
    assert model.get_config()["scale"] == 1.0
    path = str(tmp_path / "scaled.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, custom_objects={"_Scaled": _Scaled})
    assert loaded.scale == 1.0
    assert not np.array_equal(loaded(x), model(x))


@pytest.mark.parametrize(
    "make",
    [
        _AutoConfig,
        _Scaled,
        lambda: _Scaled(units=3, scale=1.0, activation="relu"),
        _Resolved,
        lambda: _NoArguments(name="no_arguments"),
    ],
)
def test_subclassed_model_with_a_generated_config_is_copied(make):
    model, x = _built(make())
    teacher = clone_teacher(model)
    assert type(teacher) is type(model)
    assert not teacher.trainable
    _assert_same_weights(model, teacher)
    np.testing.assert_array_equal(teacher(x), model(x))


@pytest.mark.parametrize(
    "model, detail",
    [
        (
            _AutoConfig(units=5),
            r"_AutoConfig \(`__init__` arguments \['units'\]\) does not "
            r"implement `get_config`, and Keras 3 generates the config of such "
            r"a subclassed model from the defaults of its `__init__` "
            r"arguments, not from the values it was built with; the model "
            r"rebuilt from them does not take its weights \(A total of \d+ "
            r"objects? could not be loaded\)\)$",
        ),
        (
            _Scaled(scale=2.0),
            r"_Scaled \(`__init__` arguments \['units', 'scale', "
            r"'activation'\]\) does not implement `get_config`, .*: _Scaled "
            r"holds scale=2\.0, its copy scale=1\.0\)$",
        ),
        (
            _Scaled(activation="tanh"),
            r".*_Scaled holds activation='tanh', its copy activation='relu'\)$",
        ),
        (
            _Resolved(shift=1.0),
            r"_Resolved \(`__init__` arguments \['width', 'shift'\]\) .*, and "
            r"the copy rebuilt from them computes other outputs than the "
            r"model\)$",
        ),
        (
            _Holder(keras.layers.Dense(2)),
            r"_Holder does not implement `get_config`, and Keras cannot "
            r"generate its config from the `__init__` arguments \['layer'\]",
        ),
    ],
)
def test_subclassed_model_whose_generated_config_is_wrong_is_refused(
    model, detail
):
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `model`\. Expected a model that "
        r"can be rebuilt from its config \(implement `get_config`, or pass "
        rf"`teacher=` explicitly\)\. Received: model='{model.name}' "
        rf"\({type(model).__name__}: {detail}",
    ):
        clone_teacher(model)


def test_generated_config_nested_in_a_functional_model():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, _Scaled(scale=3.0)(inputs))
    with pytest.raises(
        ValueError, match=r"_Scaled holds scale=3\.0, its copy scale=1\.0"
    ):
        clone_teacher(model)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, _Scaled()(inputs))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_array_equal(clone_teacher(model)(x), model(x))


def test_sft_model_of_a_subclassed_model_with_a_generated_config_trains():
    # A name of its own: TensorFlow's scope names cannot start with "_".
    student, x = _built(_Scaled(name="scaled"))
    model = keras_sft.SFTModel(student, lambda_=1.0)
    assert isinstance(model.teacher, _Scaled)
    model.compile(optimizer="sgd")
    before = keras.ops.convert_to_numpy(model.teacher(x))
    model.fit(x, np.array([0, 1, 1, 0, 1]), epochs=3, verbose=0)
    np.testing.assert_array_equal(model.teacher(x), before)
    with pytest.raises(ValueError, match=r"_Scaled holds scale=2\.0"):
        keras_sft.SFTModel(_built(_Scaled(scale=2.0, name="scaled"))[0])


@keras.saving.register_keras_serializable(package="keras_sft_tests")
class _IncompleteConfig(keras.layers.Layer):
    """Its config misses the required `factor`, so Keras cannot load it."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return super().get_config()


def test_failed_copy_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    inputs = keras.Input((4,))
    model = keras.Model(inputs, _IncompleteConfig(2)(inputs))
    with pytest.raises(
        ValueError, match=r"(?s)implement `get_config`.*argument: 'factor'"
    ):
        clone_teacher(model)
    assert list(tmp_path.iterdir()) == []


def test_copy_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    clone_teacher(helpers.mlp())
    assert list(tmp_path.iterdir()) == []


def test_copy_model_is_trainable_and_identical():
    model = helpers.mlp()
    copy = copy_model(model)
    assert copy.trainable
    assert len(copy.trainable_weights) == len(model.trainable_weights)
    _assert_same_weights(model, copy)


def test_model_compiled_with_a_lambda_is_copied_without_warning():
    # Warnings are errors in this test suite: Keras warns when it saves a
    # lambda, which the copy reloads on purpose.
    model = helpers.mlp()
    model.compile(optimizer="sgd", loss=lambda y, p: keras.ops.mean(p * p))
    teacher = clone_teacher(model)
    _assert_same_weights(model, teacher)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cast_teacher_computes_in_dtype_and_stores_its_weights_in_it(dtype):
    teacher = clone_teacher(helpers.mlp())
    x, _, _ = helpers.classification_data()
    expected = helpers.numpy_mlp_logits(teacher.get_weights(), x)
    cast_teacher(teacher, dtype)
    assert {w.dtype for w in teacher.weights} == {dtype}
    outputs = teacher(x)
    assert keras.backend.standardize_dtype(outputs.dtype) == dtype
    # Sums of 6 then 8 products, and the rounding of the inputs, the
    # weights, the hidden layer and the outputs to `dtype`.
    helpers.assert_close_across_op_orders(
        np.asarray(outputs, "float32"),
        expected,
        dtype=tf.as_dtype(dtype).as_numpy_dtype,
        terms=6 + 8 + 4,
    )


def test_cast_teacher_leaves_shared_weights_in_place():
    student = helpers.mlp()
    student.layers[1].trainable = False
    teacher = _shared_teacher.shared_teacher(student)
    shared = teacher.layers[1].kernel
    assert shared is student.layers[1].kernel
    cast_teacher(teacher, "bfloat16", shared_weights=student.weights)
    assert teacher.layers[1].kernel is shared
    assert shared.dtype == "float32"
    owned = _shared_teacher.owned_weights(student, teacher)
    assert owned and {w.dtype for w in owned} == {"bfloat16"}
    x, _, _ = helpers.classification_data()
    assert keras.backend.standardize_dtype(teacher(x).dtype) == "bfloat16"


def _grid_mlp():
    """`mlp()` with weights in {-0.5, 0, 0.5}: Keras's int8 quantization
    of them is exact, and so is the first layer on inputs in {-1, 0, 1}."""
    model = helpers.mlp()
    model.set_weights(
        [np.round(np.clip(w, -0.5, 0.5) * 2) / 2 for w in model.get_weights()]
    )
    return model


def _numpy_int8_dense(inputs, kernel, kernel_scale, bias):
    """Keras 3's int8 `Dense` in float32 NumPy: the inputs quantized per
    row by their largest magnitude, an integer product, then de-scaled."""
    inputs = inputs.astype("float32")
    scale = np.float32(127) / (
        np.abs(inputs).max(axis=-1, keepdims=True) + np.float32(1e-7)
    )
    quantized = np.clip(np.round(inputs * scale), -127, 127)
    product = (quantized.astype("int64") @ kernel.astype("int64")).astype(
        "float32"
    )
    return product / (kernel_scale * scale) + bias


def test_cast_teacher_int8_runs_keras_int8_layers_on_a_quarter_of_the_bytes():
    teacher = clone_teacher(_grid_mlp())
    float_weights = teacher.get_weights()
    float_bytes = sum(w.nbytes for w in float_weights)
    x = np.random.default_rng(0).integers(-1, 2, size=(32, 6)).astype("float32")
    cast_teacher(teacher, "int8")
    dense = [layer for layer in teacher.layers if layer.weights]
    for layer, kernel in zip(dense, float_weights[::2], strict=True):
        assert layer.quantization_mode == "int8"
        assert layer._kernel.dtype == "int8"
        # Per output channel: the largest magnitude maps to 127.
        np.testing.assert_allclose(
            layer._kernel.numpy() / layer.kernel_scale.numpy(),
            kernel,
            atol=np.abs(kernel).max() / 127,
        )
    # A byte per kernel entry, a float32 scale per output: under a third
    # of the float32 teacher's bytes on this small model.
    int8_bytes = sum(w.numpy().nbytes for w in teacher.weights)
    assert int8_bytes == float_bytes - 3 * (6 * 8 + 8 * 3) + 4 * (8 + 3)
    hidden = np.maximum(
        _numpy_int8_dense(x, *_int8_parts(dense[0])), np.float32(0)
    )
    expected = _numpy_int8_dense(hidden, *_int8_parts(dense[1]))
    outputs = np.asarray(teacher(x))
    np.testing.assert_allclose(outputs, expected, rtol=1e-6, atol=1e-6)
    # The quantized hidden layer moves the outputs, within its rounding.
    float_outputs = helpers.numpy_mlp_logits(float_weights, x)
    error = np.abs(outputs - float_outputs).max()
    assert 0 < error < 0.02 * np.abs(float_outputs).max()


def _int8_parts(layer):
    return (
        layer._kernel.numpy(),
        layer.kernel_scale.numpy(),
        layer.bias.numpy(),
    )


def test_cast_teacher_int8_quantizes_only_what_it_owns_and_keras_can():
    inputs = keras.Input((6, 6, 1))
    hidden = keras.layers.Conv2D(2, 3, activation="relu")(inputs)
    hidden = keras.layers.Flatten()(hidden)
    hidden = keras.layers.Dense(8, activation="relu")(hidden)
    outputs = keras.layers.Dense(3)(hidden)
    student = keras.Model(inputs, outputs)
    student.layers[3].trainable = False
    teacher = _shared_teacher.shared_teacher(student)
    shared = teacher.layers[3].kernel
    assert shared is student.layers[3].kernel
    # No warning (pytest makes them errors) for the layers Keras cannot
    # quantize, as `keras.Model.quantize` gives.
    cast_teacher(teacher, "int8", shared_weights=student.weights)
    conv, _, frozen, head = teacher.layers[1:]
    assert conv.quantization_mode is None
    assert {w.dtype for w in conv.weights} == {"float32"}
    assert frozen.quantization_mode is None and frozen.kernel is shared
    assert head.quantization_mode == "int8"
    assert head._kernel.dtype == "int8"
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 1)).astype("float32")
    assert keras.backend.standardize_dtype(teacher(x).dtype) == "float32"


def test_cast_teacher_int8_refuses_float16_layers_and_changes_nothing():
    teacher = clone_teacher(helpers.mlp())
    teacher.layers[2].dtype_policy = keras.DTypePolicy("mixed_float16")
    before = [(w.dtype, w.numpy()) for w in teacher.weights]
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `teacher_dtype`. Expected a "
        r"teacher whose layers to quantize do not compute in float16 "
        r"\(Keras's int8 quantization refuses it\). Received: "
        r"teacher_dtype='int8' with layer 'dense_\d+' computing in float16",
    ):
        cast_teacher(teacher, "int8")
    assert all(layer.quantization_mode is None for layer in teacher.layers)
    for (dtype, value), weight in zip(before, teacher.weights, strict=True):
        assert weight.dtype == dtype
        np.testing.assert_array_equal(weight.numpy(), value)
