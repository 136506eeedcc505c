"""Exports that apply the data's preprocessing: clients send raw inputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import datasets as sklearn_datasets

import keras_sft
from keras_sft import data
from tests import helpers


def _sorted_rows(images):
    """`images` in lexicographic order of their pixels, which a positive
    scaling keeps: raw and scaled copies of a set line up."""
    flat = images.reshape(len(images), -1)
    return images[np.lexsort(flat.T[::-1])]


def _serve(export_dir):
    return tf.saved_model.load(str(export_dir)).signatures["serving_default"]


def test_raw_digit_pixels_give_the_logits_of_the_scaled_pipeline(tmp_path):
    image = keras.Input((8, 8, 1), name="image")
    hidden = keras.layers.Dense(16, activation="relu")(
        keras.layers.Flatten()(image)
    )
    student = keras.Model(image, keras.layers.Dense(10, name="logits")(hidden))
    keras_sft.export_saved_model(
        student, tmp_path / "serving", preprocessing=data.rescaling("digits")
    )

    # Every digit, as the pipeline gives it and as scikit-learn stores it
    # (float 0..16), in the same order.
    scaled, _ = zip(
        *data.load("digits", split="train+test")[0].as_numpy_iterator(),
        strict=True,
    )
    scaled = _sorted_rows(np.stack(scaled))
    raw = _sorted_rows(sklearn_datasets.load_digits().images)[..., None]
    assert raw.max() == 16.0
    served = _serve(tmp_path / "serving")
    _, specs = served.structured_input_signature
    assert specs["image"].dtype == tf.float32
    np.testing.assert_allclose(
        served(image=raw.astype("float32"))["logits"].numpy(),
        student.predict(scaled, verbose=0),
        atol=1e-5,
    )


def test_a_preprocessing_lookup_table_is_exported(tmp_path):
    ids = keras.Input((1,), dtype="int64", name="ids")
    hidden = keras.layers.Flatten()(keras.layers.Embedding(5, 4)(ids))
    student = keras.Model(ids, keras.layers.Dense(3, name="logits")(hidden))
    lookup = keras.layers.StringLookup(vocabulary=["a", "b", "c"])
    keras_sft.export_saved_model(
        student,
        tmp_path / "serving",
        preprocessing=lookup,
        input_signature=[tf.TensorSpec((None, 1), tf.string, name="words")],
    )
    words = np.array([["a"], ["c"], ["unseen"], ["b"]], dtype=object)
    served = _serve(tmp_path / "serving")(words=tf.constant(words))
    # Out-of-vocabulary words map to 0, the others to 1 + their position.
    np.testing.assert_allclose(
        served["logits"].numpy(),
        student.predict(np.array([[1], [3], [0], [2]]), verbose=0),
        atol=1e-6,
    )


@pytest.mark.parametrize("preprocessing", [lambda x: x / 16.0, 16.0])
def test_preprocessing_that_is_not_a_layer_is_refused(tmp_path, preprocessing):
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `preprocessing`. Expected None or "
        r"a `keras.layers.Layer`. Received: preprocessing=",
    ):
        keras_sft.export_saved_model(
            helpers.mlp(), tmp_path / "s", preprocessing=preprocessing
        )
