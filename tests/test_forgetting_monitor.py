import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers


def _numpy_classes(model, x):
    return helpers.numpy_mlp_logits(model.get_weights(), x).argmax(-1)


def _trained_model(lambda_=0.1):
    student = helpers.mlp()
    model = keras_sft.SFTModel(student, lambda_=lambda_)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    return model


def test_logs_retained_accuracy_and_teacher_agreement_as_numpy_computes():
    x, y, _ = helpers.classification_data(n=64)
    old_x, old_y, _ = helpers.classification_data(n=40, seed=1)
    model = _trained_model()
    teacher_classes = _numpy_classes(model.teacher, old_x)
    history = model.fit(
        x,
        y,
        epochs=2,
        batch_size=16,
        verbose=0,
        callbacks=[keras_sft.ForgettingMonitor(old_x, old_y, batch_size=7)],
    )
    student_classes = _numpy_classes(model.student, old_x)
    assert history.history["retained_accuracy"][-1] == pytest.approx(
        np.mean(student_classes == old_y)
    )
    assert history.history["teacher_agreement"][-1] == pytest.approx(
        np.mean(student_classes == teacher_classes)
    )
    # Training moved the student: the agreement measures something.
    assert history.history["teacher_agreement"][-1] < 1.0


def test_monitors_later_in_the_list_see_the_logs():
    x, y, _ = helpers.classification_data(n=32)
    model = _trained_model(lambda_=0.0)
    seen = []
    reader = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(dict(logs))
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="teacher_agreement", mode="max", patience=0
    )
    model.fit(
        x,
        y,
        epochs=3,
        verbose=0,
        callbacks=[keras_sft.ForgettingMonitor(x, y), stop, reader],
    )
    assert {"retained_accuracy", "teacher_agreement"} <= set(seen[0])


def test_plain_model_gets_retained_accuracy_only():
    x, y, _ = helpers.classification_data(n=32)
    model = helpers.mlp()
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(
        x,
        y,
        epochs=1,
        verbose=0,
        callbacks=[keras_sft.ForgettingMonitor(x, y[:, None])],
    )
    assert "teacher_agreement" not in history.history
    assert history.history["retained_accuracy"][0] == pytest.approx(
        np.mean(_numpy_classes(model, x) == y)
    )


def test_dataset_of_inputs_and_labels_is_read_in_order():
    x, y, _ = helpers.classification_data(n=30)
    model = _trained_model()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    history = model.fit(
        x,
        y,
        epochs=1,
        verbose=0,
        callbacks=[keras_sft.ForgettingMonitor(dataset)],
    )
    assert history.history["retained_accuracy"][0] == pytest.approx(
        np.mean(_numpy_classes(model.student, x) == y)
    )


def test_dataset_of_inputs_alone_gives_agreement_only():
    x, y, _ = helpers.classification_data(n=30)
    model = _trained_model()
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(8)
    history = model.fit(
        x,
        y,
        epochs=1,
        verbose=0,
        callbacks=[keras_sft.ForgettingMonitor(dataset)],
    )
    assert "retained_accuracy" not in history.history
    assert 0.0 <= history.history["teacher_agreement"][0] <= 1.0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"x": np.zeros((4, 6)), "batch_size": 0},
            r"Invalid value for argument `batch_size`. Expected an int > 0. "
            r"Received: batch_size=0",
        ),
        (
            {"x": [1, 2, 3]},
            r"Invalid value for argument `x`. Expected a NumPy array or "
            r"tensor .* Received: x of type list",
        ),
        (
            {"x": np.zeros((4, 6)), "y": np.zeros(3)},
            r"Invalid value for argument `y`. Expected one label per "
            r"example of `x` \(4\). Received: 3 labels",
        ),
        (
            {
                "x": tf.data.Dataset.from_tensor_slices(np.zeros((4, 6))),
                "y": np.zeros(4),
            },
            r"Invalid value for argument `y`. Expected None when `x` is a "
            r"dataset",
        ),
        (
            {
                "x": tf.data.Dataset.from_tensor_slices(
                    np.zeros((4, 6))
                ).repeat()
            },
            r"Invalid value for argument `x`. Expected a finite dataset",
        ),
    ],
)
def test_invalid_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        keras_sft.ForgettingMonitor(**arguments)


def test_multi_output_model_is_refused_when_training_begins():
    inputs = keras.Input((6,))
    model = keras.Model(
        inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(2)(inputs)]
    )
    model.compile(optimizer="sgd", loss=["mse", "mse"])
    x = np.zeros((4, 6), "float32")
    with pytest.raises(ValueError, match=r"one output .* this one has 2"):
        model.fit(
            x,
            [np.zeros((4, 3)), np.zeros((4, 2))],
            verbose=0,
            callbacks=[keras_sft.ForgettingMonitor(x)],
        )
