"""Exports read by clients that have TensorFlow only, and by TFLite."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers
from tests.test_export_tables import STRING_WORDS
from tests.test_export_tables import string_student

# Run with `-c`: `None` in `sys.modules` makes any import of Keras or
# keras-sft fail, yet lets TensorFlow import (it only probes for Keras).
_CLIENT = """
import sys
sys.modules["keras"] = None
sys.modules["keras_sft"] = None
import numpy as np
import tensorflow as tf

base = sys.argv[1]
feeds = dict(np.load(f"{base}/feeds.npz"))
served = {}
for case in sys.argv[2:]:
    export = tf.saved_model.load(f"{base}/{case}")
    signature = export.signatures["serving_default"]
    inputs = {
        key.split("/", 2)[2]: value
        for key, value in feeds.items()
        if key.startswith(case + "/input/")
    }
    for name, value in signature(**inputs).items():
        served[f"{case}/{name}"] = value.numpy()
loaded = [m for m, v in sys.modules.items() if v and m.split(".")[0] == "keras"]
assert not loaded, loaded
np.savez(f"{base}/served.npz", **served)
"""


class SubclassedStudent(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, inputs):
        return self.dense(inputs)


def _segmenter():
    pixels = keras.Input((None, None, 1), name="pixels")
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(
        pixels
    )
    return keras.Model(pixels, keras.layers.Conv2D(3, 1, name="mask")(hidden))


def _students(tmp_path):
    """Each kind of student, its inputs and its export options."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 6)).astype("float32")
    images = rng.normal(size=(2, 5, 9, 1)).astype("float32")
    two_heads = keras_sft.add_head(helpers.mlp(), 4)
    joined = keras.Input((6,), name="features")
    dict_out = keras.Model(
        joined,
        {
            "digit": keras.layers.Dense(3)(joined),
            "parity": keras.layers.Dense(2)(joined),
        },
    )
    subclassed = SubclassedStudent()
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("a\nb\nc\n")
    # Bytes, not objects: `np.load` reads them back without pickle.
    words = STRING_WORDS.astype(bytes)
    students = {
        "mlp": (helpers.mlp(), {"inputs": x}, {}),
        "list": (two_heads, {"inputs": x}, {}),
        "dict": (dict_out, {"features": x}, {}),
        "segmentation": (_segmenter(), {"pixels": images}, {}),
        "subclassed": (
            subclassed,
            {"x": x},
            {"input_signature": [tf.TensorSpec((None, 6), name="x")]},
        ),
        "string": (string_student(), {"words": words}, {}),
        "vocabulary_file": (
            string_student(str(vocabulary)),
            {"words": words},
            {},
        ),
    }
    keras.config.set_dtype_policy("mixed_float16")
    students["mixed"] = (_segmenter(), {"pixels": images}, {})
    keras.config.set_dtype_policy("float32")
    return students


@pytest.mark.slow
def test_every_kind_of_export_serves_without_keras(tmp_path):
    feeds, expected = {}, {}
    cases = []
    for case, (student, feed, options) in _students(tmp_path).items():
        keras_sft.export_saved_model(student, tmp_path / case, **options)
        cases.append(case)
        (value,) = feed.values()
        predicted = student.predict(tf.constant(value), verbose=0)
        if isinstance(predicted, np.ndarray):
            predicted = [predicted]
        if isinstance(predicted, list):
            names = getattr(student, "output_names", ["outputs"])
            predicted = dict(zip(names, predicted, strict=True))
        for name, value in feed.items():
            feeds[f"{case}/input/{name}"] = value
        for name, value in predicted.items():
            expected[f"{case}/{name}"] = value
    np.savez(tmp_path / "feeds.npz", **feeds)
    # The export's own copy of the vocabulary is what the client reads.
    os.remove(tmp_path / "vocabulary.txt")

    subprocess.run(
        [sys.executable, "-c", _CLIENT, str(tmp_path), *cases],
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    served = dict(np.load(tmp_path / "served.npz"))
    assert sorted(served) == sorted(expected)
    for key, value in expected.items():
        assert served[key].dtype == np.float32, key
        atol = 1e-2 if key.startswith("mixed/") else 1e-5
        np.testing.assert_allclose(served[key], value, atol=atol, err_msg=key)


def _tflite(export_dir):
    converter = tf.lite.TFLiteConverter.from_saved_model(export_dir)
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    return interpreter.get_signature_runner("serving_default")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_converts_float32_and_mixed_precision_students(tmp_path):
    images = np.random.default_rng(0).normal(size=(1, 6, 6, 1))
    images = images.astype("float32")
    student = _segmenter()
    keras.config.set_dtype_policy("mixed_float16")
    mixed = _segmenter()
    keras_sft.export_saved_model(student, tmp_path / "f32")
    keras_sft.export_saved_model(mixed, tmp_path / "mixed")
    keras_sft.export_saved_model(
        mixed, tmp_path / "mixed_f32", compute_dtype="float32"
    )

    mask = _tflite(str(tmp_path / "f32"))(pixels=images)["mask"]
    np.testing.assert_allclose(
        mask, student.predict(images, verbose=0), atol=1e-5
    )
    mask = _tflite(str(tmp_path / "mixed_f32"))(pixels=images)["mask"]
    assert mask.dtype == np.float32
    np.testing.assert_allclose(
        mask, mixed.predict(images, verbose=0), atol=1e-2
    )
    # Computing in float16 needs TensorFlow ops TFLite lacks.
    with pytest.raises(Exception, match="f16"):
        _tflite(str(tmp_path / "mixed"))
