"""Exports of students that keep a vocabulary in a lookup table."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft


def string_student(vocabulary=("a", "b", "c")):
    """`StringLookup` -> `Embedding` -> `Dense` on one string per example."""
    if not isinstance(vocabulary, str):
        vocabulary = list(vocabulary)
    words = keras.Input((1,), dtype="string", name="words")
    ids = keras.layers.StringLookup(vocabulary=vocabulary)(words)
    hidden = keras.layers.Flatten()(keras.layers.Embedding(5, 4)(ids))
    return keras.Model(words, keras.layers.Dense(3, name="logits")(hidden))


STRING_WORDS = np.array([["a"], ["c"], ["unseen"], ["b"]], dtype=object)


def _integer_student():
    ids = keras.Input((2,), dtype="int64", name="ids")
    indices = keras.layers.IntegerLookup(vocabulary=[3, 7, 11])(ids)
    hidden = keras.layers.Flatten()(keras.layers.Embedding(5, 4)(indices))
    return keras.Model(ids, keras.layers.Dense(3, name="logits")(hidden))


def _text_student():
    vectorize = keras.layers.TextVectorization(
        max_tokens=10, output_sequence_length=4
    )
    vectorize.adapt(["the cat sat", "the dog ran far away"])
    text = keras.Input((1,), dtype="string", name="text")
    hidden = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(10, 4)(vectorize(text))
    )
    return keras.Model(text, keras.layers.Dense(3, name="logits")(hidden))


def _export_and_serve(student, feed, export_dir):
    """The served logits, after the export is written and reloaded."""
    keras_sft.export_saved_model(student, export_dir)
    signature = tf.saved_model.load(str(export_dir)).signatures[
        "serving_default"
    ]
    ((name, value),) = feed.items()
    return signature(**{name: tf.constant(value)})["logits"].numpy()


def _stored_entries(export_dir):
    reader = tf.train.load_checkpoint(
        str(export_dir / "variables" / "variables")
    )
    return [
        name
        for name in reader.get_variable_to_shape_map()
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    ]


@pytest.mark.parametrize(
    "build, feed",
    [
        (string_student, {"words": STRING_WORDS}),
        (
            _integer_student,
            {"ids": np.array([[3, 11], [7, 99], [99, 3]], dtype="int64")},
        ),
        (
            _text_student,
            {"text": np.array([["the cat"], ["dog far unseen"]], dtype=object)},
        ),
    ],
    ids=["string_lookup", "integer_lookup", "text_vectorization"],
)
def test_lookup_students_are_served_exactly(tmp_path, build, feed):
    student = build()
    served = _export_and_serve(student, feed, tmp_path / "serving")
    (value,) = feed.values()
    expected = student.predict(tf.constant(value), verbose=0)
    np.testing.assert_array_equal(served, expected)
    # Tables hold no weights (an adapted layer's emptied token-counting
    # table is not saved): still one entry per weight.
    assert len(_stored_entries(tmp_path / "serving")) == len(student.weights)


def test_string_lookup_follows_its_vocabulary(tmp_path):
    student = string_student()
    served = _export_and_serve(
        student, {"words": STRING_WORDS}, tmp_path / "serving"
    )
    embeddings, kernel, bias = student.get_weights()
    # Index 0 is the out-of-vocabulary token, then "a", "b", "c".
    indices = np.array([1, 3, 0, 2])
    np.testing.assert_allclose(
        served, embeddings[indices] @ kernel + bias, rtol=0, atol=1e-6
    )


def test_vocabulary_file_is_copied_into_the_export(tmp_path):
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("a\nb\nc\n")
    student = string_student(str(vocabulary))
    expected = student.predict(tf.constant(STRING_WORDS), verbose=0)
    keras_sft.export_saved_model(student, tmp_path / "serving")
    # The server reads the export alone, not the training machine's files.
    os.remove(vocabulary)

    assert os.listdir(tmp_path / "serving" / "assets") == ["vocabulary.txt"]
    signature = tf.saved_model.load(str(tmp_path / "serving")).signatures[
        "serving_default"
    ]
    served = signature(words=tf.constant(STRING_WORDS))["logits"]
    np.testing.assert_array_equal(served, expected)


def test_table_held_by_no_layer_is_refused(tmp_path):
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(["a", "b"], [1, 2]), 0
    )
    words = keras.Input((1,), dtype="string", name="words")
    ids = keras.layers.Lambda(table.lookup, output_shape=(1,))(words)
    hidden = keras.layers.Flatten()(keras.layers.Embedding(3, 4)(ids))
    student = keras.Model(words, keras.layers.Dense(3)(hidden))
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `model`. Expected a model whose "
        r"lookup tables and other resources are attributes of its layers. "
        r"Received: model=.* whose call uses 1 resource\(s\) none of its "
        r"layers holds: ",
    ):
        keras_sft.export_saved_model(student, tmp_path / "base", version="next")
    # Refused before anything is written.
    assert os.listdir(tmp_path) == []
