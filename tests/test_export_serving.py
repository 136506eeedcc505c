"""What a model server or a client sees of `export_saved_model`."""

import os
import stat

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers


def _signature(export_dir):
    return tf.saved_model.load(str(export_dir)).signatures["serving_default"]


def _softmax(z):
    return np.exp(helpers.log_softmax(z))


def _named_student():
    pixels = keras.Input((6,), name="pixels")
    hidden = keras.layers.Dense(8, activation="relu")(pixels)
    logits = keras.layers.Dense(3, name="logits")(hidden)
    return keras.Model(pixels, logits)


def _dict_student():
    inputs = {
        "image": keras.Input((6,), name="image"),
        "extra": keras.Input((2,), name="extra"),
    }
    joined = keras.layers.Concatenate()([inputs["image"], inputs["extra"]])
    return keras.Model(
        inputs,
        {
            "digit": keras.layers.Dense(3)(joined),
            "parity": keras.layers.Dense(2)(joined),
        },
    )


class SubclassedStudent(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, inputs):
        return self.dense(inputs)


def test_signature_names_come_from_the_model(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6)).astype("float32")
    extra = rng.normal(size=(4, 2)).astype("float32")
    two_heads = keras_sft.add_head(helpers.mlp(), 4)
    unnamed = [keras.Input((6,)), keras.Input((2,), name="extra")]
    two_inputs = keras.Model(
        unnamed, keras.layers.Dense(3)(keras.layers.Concatenate()(unnamed))
    )
    cases = {
        "named": (_named_student(), {"pixels": x}),
        "sequential": (
            keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)]),
            {"inputs": x},
        ),
        "list": (two_heads, {"inputs": x}),
        "dict": (_dict_student(), {"image": x, "extra": extra}),
        "two_inputs": (two_inputs, {"inputs_0": x, "extra": extra}),
    }
    expected_outputs = {
        "named": ["logits"],
        "sequential": [cases["sequential"][0].layers[-1].name],
        "list": two_heads.output_names,
        "dict": ["digit", "parity"],
        "two_inputs": two_inputs.output_names,
    }
    for case, (student, feed) in cases.items():
        keras_sft.export_saved_model(student, tmp_path / case)
        signature = _signature(tmp_path / case)
        _, specs = signature.structured_input_signature
        assert sorted(specs) == sorted(feed), case
        served = signature(**{k: tf.constant(v) for k, v in feed.items()})
        assert sorted(served) == sorted(expected_outputs[case]), case
        call = {
            "dict": feed,
            "two_inputs": [x, extra],
        }.get(case, x)
        predicted = student.predict(call, verbose=0)
        if not isinstance(predicted, (list, dict)):
            predicted = [predicted]
        if isinstance(predicted, list):
            predicted = dict(
                zip(expected_outputs[case], predicted, strict=True)
            )
        for name, value in predicted.items():
            assert served[name].dtype == tf.float32
            np.testing.assert_allclose(served[name], value, atol=1e-5)


def test_probabilities_are_served_beside_or_instead_of_logits(tmp_path):
    student = _named_student()
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    logits = student.predict(x, verbose=0)
    keras_sft.export_saved_model(
        student, tmp_path / "p", outputs="probabilities"
    )
    keras_sft.export_saved_model(student, tmp_path / "b", outputs="both")

    probabilities = _signature(tmp_path / "p")(pixels=tf.constant(x))
    both = _signature(tmp_path / "b")(pixels=tf.constant(x))
    assert sorted(probabilities) == ["logits_probabilities"]
    assert sorted(both) == ["logits", "logits_probabilities"]
    for served in (probabilities, both):
        np.testing.assert_allclose(
            served["logits_probabilities"], _softmax(logits), atol=1e-6
        )
    np.testing.assert_allclose(both["logits"], logits, atol=1e-5)


def test_mixed_float16_student_serves_float32(tmp_path):
    keras.config.set_dtype_policy("mixed_float16")
    student = _named_student()
    assert student.outputs[0].dtype == "float16"
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    keras_sft.export_saved_model(student, tmp_path / "mixed")
    keras_sft.export_saved_model(
        student, tmp_path / "f32", compute_dtype="float32"
    )

    expected = student.predict(x, verbose=0).astype("float32")
    for name in ("mixed", "f32"):
        logits = _signature(tmp_path / name)(pixels=tf.constant(x))["logits"]
        assert logits.dtype == tf.float32
        np.testing.assert_allclose(logits, expected, atol=1e-2)
    # The trace's float32 policy does not stay on the student.
    assert student.layers[-1].compute_dtype == "float16"


def test_subclassed_student_needs_an_input_signature(tmp_path):
    student = SubclassedStudent()
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    expected = student.predict(x, verbose=0)
    with pytest.raises(
        ValueError,
        match=r"Expected a built model with symbolic inputs \(Functional or "
        r"Sequential\), or pass `input_signature` \(a list of "
        r"`tf.TensorSpec`\). Received: model=",
    ):
        keras_sft.export_saved_model(student, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    keras_sft.export_saved_model(
        student,
        tmp_path / "serving",
        input_signature=[tf.TensorSpec((None, 6), tf.float32, name="pixels")],
    )
    served = _signature(tmp_path / "serving")(pixels=tf.constant(x))
    assert list(served) == ["outputs"]
    np.testing.assert_allclose(served["outputs"], expected, atol=1e-5)


def test_dict_input_signature_is_accepted(tmp_path):
    student = _dict_student()
    rng = np.random.default_rng(0)
    feed = {
        "image": rng.normal(size=(3, 6)).astype("float32"),
        "extra": rng.normal(size=(3, 2)).astype("float32"),
    }
    keras_sft.export_saved_model(
        student,
        tmp_path / "serving",
        input_signature=[
            {
                "image": tf.TensorSpec((None, 6), tf.float32),
                "extra": tf.TensorSpec((None, 2), tf.float32),
            }
        ],
    )
    served = _signature(tmp_path / "serving")(**feed)
    np.testing.assert_allclose(
        served["digit"], student.predict(feed, verbose=0)["digit"], atol=1e-5
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"outputs": "softmax"},
            r"Invalid value for argument `outputs`. Expected one of "
            r"\('logits', 'probabilities', 'both'\). Received: "
            r"outputs='softmax'",
        ),
        (
            {"version": -1},
            r"Invalid value for argument `version`. Expected None, 'next' or "
            r"an int >= 0. Received: version=-1",
        ),
        (
            {"version": "1"},
            r"Invalid value for argument `version`. Expected None, 'next' or "
            r"an int >= 0. Received: version='1'",
        ),
        (
            {"compute_dtype": "float16"},
            r"Invalid value for argument `compute_dtype`. Expected None or "
            r"'float32'. Received: compute_dtype='float16'",
        ),
        (
            {"input_signature": [np.zeros((1, 6))]},
            r"Invalid value for argument `input_signature`. Expected a "
            r"non-empty list of `tf.TensorSpec`, or a list holding one dict "
            r"of them. Received: input_signature=",
        ),
        (
            {"input_signature": []},
            r"Invalid value for argument `input_signature`. Expected a "
            r"non-empty list",
        ),
    ],
)
def test_invalid_options_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_sft.export_saved_model(helpers.mlp(), tmp_path / "s", **kwargs)
    assert os.listdir(tmp_path) == []


def test_probabilities_of_a_one_unit_output_are_refused(tmp_path):
    student = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(1, name="score")]
    )
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `outputs`. Expected 'logits' for "
        r"a student with an output of one unit \(its softmax is always 1\). "
        r"Received: outputs='both' with output 'score' of shape \(None, 1\)",
    ):
        keras_sft.export_saved_model(student, tmp_path / "s", outputs="both")


def test_versioned_layout_for_tensorflow_serving(tmp_path, monkeypatch):
    base = tmp_path / "models" / "student"
    x = np.random.default_rng(0).normal(size=(2, 6)).astype("float32")
    first, second = helpers.mlp(seed=0), helpers.mlp(seed=5)
    # Parents are created; the next free version of an empty base is 1.
    keras_sft.export_saved_model(first, base, version="next")
    keras_sft.export_saved_model(second, base, version="next")
    keras_sft.export_saved_model(first, base, version=7)
    keras_sft.export_saved_model(first, base, version="next")
    assert sorted(os.listdir(base), key=int) == ["1", "2", "7", "8"]
    assert (base / "2" / "saved_model.pb").is_file()
    (served,) = _signature(base / "2")(inputs=tf.constant(x)).values()
    np.testing.assert_allclose(served, second.predict(x, verbose=0), atol=1e-5)

    with pytest.raises(ValueError, match=r"does not exist yet"):
        keras_sft.export_saved_model(second, base, version=1)
    keras_sft.export_saved_model(second, base, version=1, overwrite=True)
    (served,) = _signature(base / "1")(inputs=tf.constant(x)).values()
    np.testing.assert_allclose(served, second.predict(x, verbose=0), atol=1e-5)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        keras_sft.export_saved_model(first, base, version="next")
    # No partial version 9 (nor its staging directory) is left behind.
    assert sorted(os.listdir(base), key=int) == ["1", "2", "7", "8"]


@pytest.mark.parametrize(
    "umask, directory, file", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)]
)
def test_modes_follow_the_umask(tmp_path, umask, directory, file):
    previous = os.umask(umask)
    try:
        keras_sft.export_saved_model(
            helpers.mlp(), tmp_path / "base", version="next"
        )
    finally:
        os.umask(previous)
    modes = {}
    for root, dirs, files in os.walk(tmp_path / "base"):
        for name in dirs + files:
            path = os.path.join(root, name)
            modes[path] = stat.S_IMODE(os.stat(path).st_mode), name in files
    modes[str(tmp_path / "base")] = (
        stat.S_IMODE(os.stat(tmp_path / "base").st_mode),
        False,
    )
    assert len(modes) > 4
    for path, (mode, is_file) in modes.items():
        assert mode == (file if is_file else directory), path


def test_signature_takes_keyword_tensors_and_numpy(tmp_path):
    student = _named_student()
    keras_sft.export_saved_model(student, tmp_path / "serving")
    signature = _signature(tmp_path / "serving")
    x = np.random.default_rng(0).normal(size=(3, 6))
    expected = student.predict(x.astype("float32"), verbose=0)

    for value in (tf.constant(x, tf.float32), x.astype("float32"), x):
        # A float64 NumPy array is converted to the signature's float32.
        logits = signature(pixels=value)["logits"]
        np.testing.assert_allclose(logits, expected, atol=1e-5)
    with pytest.raises(TypeError, match="positional"):
        signature(x.astype("float32"))
    # A float64 tensor is not converted: clients send float32.
    with pytest.raises(tf.errors.InvalidArgumentError, match="double"):
        signature(pixels=tf.constant(x))


def test_each_weight_is_stored_once(tmp_path):
    student = helpers.mlp(input_dim=100, hidden=200, classes=10)
    keras_sft.export_saved_model(student, tmp_path / "serving")
    reader = tf.train.load_checkpoint(
        str(tmp_path / "serving" / "variables" / "variables")
    )
    stored = [
        name
        for name in reader.get_variable_to_shape_map()
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    ]
    assert len(stored) == len(student.weights)
    weights = sum(w.nbytes for w in student.get_weights())
    directory = tmp_path / "serving" / "variables"
    size = sum(
        os.path.getsize(directory / name) for name in os.listdir(directory)
    )
    # A second copy of each weight would double this.
    assert weights <= size < 1.1 * weights
