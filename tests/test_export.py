import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers


def _serve(export_dir, x):
    loaded = tf.saved_model.load(export_dir)
    signature = loaded.signatures["serving_default"]
    (logits,) = signature(inputs=tf.constant(x)).values()
    return loaded, logits.numpy()


def test_serving_default_gives_the_students_logits(tmp_path):
    student = helpers.mlp(dropout=0.5)
    model = keras_sft.SFTModel(student, lambda_=0.5)
    model.compile(optimizer="adam")
    x, y, _ = helpers.classification_data()
    # Train, so that student and teacher differ.
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    export_dir = tmp_path / "serving"
    keras_sft.export_saved_model(model, export_dir)

    _, logits = _serve(str(export_dir), x)
    np.testing.assert_allclose(
        logits, student.predict(x, verbose=0), rtol=0, atol=1e-5
    )
    # Dropout off (training=False): not the teacher's logits either.
    assert np.abs(logits - model.teacher.predict(x, verbose=0)).max() > 1e-3


def test_saved_model_holds_no_teacher_variables(tmp_path):
    model = keras_sft.SFTModel(helpers.mlp())
    keras_sft.export_saved_model(model, tmp_path / "serving")
    loaded = tf.saved_model.load(str(tmp_path / "serving"))
    student_shapes = sorted(tuple(v.shape) for v in model.student.variables)
    loaded_shapes = sorted(tuple(v.shape) for v in loaded.variables)
    assert loaded_shapes == student_shapes
    assert len(model.variables) == 2 * len(loaded.variables)
    # Values too: the exported variables are the student's.
    student_values = sorted(v.numpy().sum() for v in model.student.variables)
    loaded_values = sorted(v.numpy().sum() for v in loaded.variables)
    np.testing.assert_allclose(loaded_values, student_values)


def test_plain_keras_model_is_accepted(tmp_path):
    model = helpers.mlp()
    keras_sft.export_saved_model(model, tmp_path / "serving")
    x, _, _ = helpers.classification_data(n=5)
    _, logits = _serve(str(tmp_path / "serving"), x)
    np.testing.assert_allclose(logits, model.predict(x, verbose=0), atol=1e-5)


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def save_partly_then_fail(obj, export_dir, *args, **kwargs):
        with open(os.path.join(export_dir, "saved_model.pb"), "w") as file:
            file.write("partial")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", save_partly_then_fail)
    with pytest.raises(OSError, match="disk full"):
        keras_sft.export_saved_model(helpers.mlp(), tmp_path / "serving")
    assert os.listdir(tmp_path) == []


def test_overwrite_replaces_an_existing_export(tmp_path):
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    old, new = helpers.mlp(seed=0), helpers.mlp(seed=5)
    keras_sft.export_saved_model(old, tmp_path / "serving")
    keras_sft.export_saved_model(new, tmp_path / "serving", overwrite=True)
    _, logits = _serve(str(tmp_path / "serving"), x)
    np.testing.assert_allclose(logits, new.predict(x, verbose=0), atol=1e-5)
    assert os.listdir(tmp_path) == ["serving"]


def test_failed_overwrite_keeps_the_previous_export(tmp_path, monkeypatch):
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    old = helpers.mlp(seed=0)
    keras_sft.export_saved_model(old, tmp_path / "serving")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        keras_sft.export_saved_model(
            helpers.mlp(seed=5), tmp_path / "serving", overwrite=True
        )
    monkeypatch.undo()
    _, logits = _serve(str(tmp_path / "serving"), x)
    np.testing.assert_allclose(logits, old.predict(x, verbose=0), atol=1e-5)
    assert os.listdir(tmp_path) == ["serving"]


def test_existing_export_dir_is_refused(tmp_path):
    (tmp_path / "serving").mkdir()
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `export_dir`. Expected a path "
        r"that does not exist yet \(or pass `overwrite=True`\). Received: "
        r"export_dir=.*serving'",
    ):
        keras_sft.export_saved_model(helpers.mlp(), tmp_path / "serving")


def test_missing_parent_is_refused(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `export_dir`. Expected a path "
        r"whose parent directory exists. Received: export_dir=",
    ):
        keras_sft.export_saved_model(helpers.mlp(), tmp_path / "a" / "b")


def test_non_model_is_refused(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `model`. Expected a `keras.Model` "
        r"or a `keras_sft.SFTModel`. Received: model='model'",
    ):
        keras_sft.export_saved_model("model", tmp_path / "serving")


def test_model_without_symbolic_input_is_refused(tmp_path):
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `model`. Expected a built model "
        r"with symbolic inputs \(Functional or Sequential\), or pass "
        r"`input_signature` \(a list of `tf.TensorSpec`\).",
    ):
        keras_sft.export_saved_model(model, tmp_path / "serving")


def test_every_output_of_a_two_output_student_is_served(tmp_path):
    student = keras_sft.add_head(helpers.mlp(), 4)
    model = keras_sft.SFTModel(
        student, distill_outputs=[student.output_names[0]]
    )
    keras_sft.export_saved_model(model, tmp_path / "serving")
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    served = tf.saved_model.load(str(tmp_path / "serving"))
    outputs = served.signatures["serving_default"](inputs=tf.constant(x))
    expected = student.predict(x, verbose=0)
    # Named after the output layers, as the training logs call them.
    assert sorted(outputs) == sorted(student.output_names)
    for name, value in zip(student.output_names, expected, strict=True):
        np.testing.assert_allclose(outputs[name].numpy(), value, atol=1e-5)
