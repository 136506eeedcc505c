"""`SFTModel` where a user touches it as a `keras.Model`: trainability,
`export`, `summary`, and students built on their first batch."""

import json
import os
import warnings

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers

_NO_WEIGHTS = "The model does not have any trainable weights."


def _ids(variables):
    return [id(v) for v in variables]


def _fit_warnings(model, x, y):
    """The messages of the warnings `fit` raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return [str(w.message) for w in caught]


class _SubclassedClassifier(keras.Model):
    """A subclassed model whose weights appear on its first call."""

    def __init__(self, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.logits = keras.layers.Dense(classes)

    def call(self, inputs):
        return self.logits(self.hidden(inputs))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


def test_teacher_stays_frozen_when_the_wrapper_is_made_trainable():
    model = keras_sft.SFTModel(helpers.mlp())

    model.trainable = False
    model.trainable = True

    assert model.trainable and model.student.trainable
    assert not model.teacher.trainable
    assert model.teacher.trainable_weights == []
    assert _ids(model.trainable_weights) == _ids(
        model.student.trainable_weights
    )


def test_untrainable_wrapper_trains_nothing_with_keras_warning():
    x, y, _ = helpers.classification_data()
    model = keras_sft.SFTModel(helpers.mlp())
    model.trainable = False
    model.compile(optimizer="sgd")
    before = model.student.get_weights()

    messages = _fit_warnings(model, x, y)

    assert _NO_WEIGHTS in messages
    for a, b in zip(model.student.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    # Plain Keras says the same of the same model.
    plain = helpers.mlp()
    plain.trainable = False
    plain.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    assert _NO_WEIGHTS in _fit_warnings(plain, x, y)


def _assert_exports_the_student(model, x, path):
    """`model.export` serves `model.predict`, with the student's variables."""
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    # As the student's own summary: its layers.
    for layer in model.student.layers:
        assert layer.name in "\n".join(lines)

    model.export(str(path), verbose=False)

    served = tf.saved_model.load(str(path))
    np.testing.assert_allclose(
        served.serve(x).numpy(), model.predict(x, verbose=0), atol=1e-6
    )
    assert len(served.variables) == len(model.student.variables)


def test_unfreezing_without_compile_trains_as_the_plain_model():
    # Keras keeps a model's traced step until `compile`: a layer unfrozen
    # after it does not train yet. SFTModel remade its step there, for an
    # optimizer built for other variables ("Unknown variable").
    x, y, _ = helpers.classification_data()
    pretrained = helpers.mlp().get_weights()
    plain, student = helpers.mlp(), helpers.mlp()
    for frozen in (plain, student):
        frozen.layers[1].trainable = False
    # The teacher shares the frozen layer's weights.
    model = keras_sft.SFTModel(student, lambda_=0.0)
    for m in (plain, model):
        m.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for unfrozen in (plain, student):
        unfrozen.layers[1].trainable = True
    for m in (plain, model):
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    for weight, expected in zip(
        student.get_weights(), plain.get_weights(), strict=True
    ):
        np.testing.assert_allclose(weight, expected, atol=1e-6)
    for weight, expected in zip(
        model.teacher.get_weights(), pretrained, strict=True
    ):
        np.testing.assert_array_equal(weight, expected)


def test_graph_questions_are_answered_by_the_student():
    plain = helpers.mlp()
    model = keras_sft.SFTModel(helpers.mlp())
    x = np.ones((2, 6), "float32")

    assert model.get_layer(index=1) is model.student.layers[1]
    name = model.student.layers[1].name
    assert model.get_layer(name) is model.student.get_layer(name)
    assert [t.shape for t in model.inputs] == [t.shape for t in plain.inputs]
    assert model.output is model.student.output
    assert (model.input_shape, model.output_shape) == ((None, 6), (None, 3))
    assert model.compute_output_shape((4, 6)) == (4, 3)
    features = keras.Model(model.input, model.get_layer(name).output)
    np.testing.assert_array_equal(
        features.predict(x, verbose=0),
        keras.Model(plain.input, plain.layers[1].output).predict(x, verbose=0),
    )
    # Keras's own message, naming the student's layers.
    with pytest.raises(ValueError, match="No such layer: missing"):
        model.get_layer("missing")


def test_layers_are_the_students_and_freeze_by_position_as_for_plain():
    x, y, _ = helpers.classification_data()
    plain, student = helpers.mlp(), helpers.mlp()
    model = keras_sft.SFTModel(student, lambda_=0.0)

    assert model.layers == student.layers
    for m in (plain, model):
        for layer in m.layers[:-1]:
            layer.trainable = False
        m.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    assert _ids(model.trainable_weights) == _ids(student.layers[-1].weights)
    for weight, expected in zip(
        student.get_weights(), plain.get_weights(), strict=True
    ):
        np.testing.assert_allclose(weight, expected, atol=1e-6)


def test_weights_files_keep_the_wrappers_two_models_as_its_layers(tmp_path):
    # Every file saved so far lays the weights out under the wrapper's two
    # models: `layers` answering the student's must not move them.
    model = keras_sft.SFTModel(helpers.mlp())
    path = str(tmp_path / "sft.weights.h5")
    model.save_weights(path)

    with h5py.File(path, "r") as file:
        # Keras names each model's entry after its class.
        assert sorted(file["layers"]) == ["functional", "functional_1"]
    restored = keras_sft.SFTModel(helpers.perturbed_copy(helpers.mlp()))
    restored.load_weights(path)
    for weight, expected in zip(
        restored.get_weights(), model.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(weight, expected)


def test_a_model_dropped_after_fit_leaves_no_traced_step_behind():
    # TensorFlow 2.21 keeps a plain model's traced steps, and through
    # them its weights and optimizer state, for good (issue 97697).
    x, y, _ = helpers.classification_data()
    graphs = []
    # The first fit after `clear_session` also makes TensorFlow's
    # default graph, which stays.
    for _ in range(2):
        model = keras_sft.SFTModel(helpers.mlp())
        model.compile(optimizer="adam")
        # Three epochs: the first epoch's cache, whose buffers the traced
        # step captures, is made from three.
        model.fit(x, y, epochs=3, validation_data=(x, y), verbose=0)
        model.train_on_batch(x[:8], y[:8])
        del model
        graphs.append(helpers.live_traced_graphs())

    assert graphs[1] == graphs[0]


def test_a_subclassed_student_has_no_graph_and_neither_has_the_wrapper():
    student = _SubclassedClassifier()
    student(np.ones((2, 6), "float32"))
    model = keras_sft.SFTModel(student)

    assert not hasattr(student, "inputs")
    assert not hasattr(model, "inputs")
    for m in (student, model):
        with pytest.raises(NotImplementedError, match="_SubclassedClassifier"):
            m.compute_output_shape((4, 6))


def test_freezing_through_get_layer_freezes_the_students_layer():
    model = keras_sft.SFTModel(helpers.mlp(), lambda_=0.0)
    x, y, _ = helpers.classification_data()
    frozen = model.get_layer(index=1)
    before = frozen.get_weights()

    frozen.trainable = False
    model.compile(optimizer="adam")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)

    assert not model.student.layers[1].trainable
    for weight, expected in zip(frozen.get_weights(), before, strict=True):
        np.testing.assert_array_equal(weight, expected)


def test_export_and_summary_after_construction_fit_and_loading(tmp_path):
    x, y, _ = helpers.classification_data()
    model = keras_sft.SFTModel(
        helpers.mlp(), teacher=helpers.perturbed_copy(helpers.mlp())
    )
    _assert_exports_the_student(model, x, tmp_path / "constructed")

    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, verbose=0)
    _assert_exports_the_student(model, x, tmp_path / "fitted")

    loaded = helpers.keras_round_trip(model, tmp_path, "sft.keras")
    _assert_exports_the_student(loaded, x, tmp_path / "loaded")


def test_unbuilt_subclassed_student_builds_on_its_first_batch(tmp_path):
    x, y, _ = helpers.classification_data()
    student = _SubclassedClassifier(name="subclassed")
    model = keras_sft.SFTModel(student, teacher=helpers.mlp())
    model.compile(optimizer="adam")

    model.fit(x, y, epochs=1, verbose=0)

    assert student.built and model.built
    assert len(student.trainable_weights) == 4
    if model.jit_compile:
        # XLA compiles the wrapper's predict function, not the student's.
        helpers.assert_close_across_op_orders(
            model.predict(x, verbose=0),
            student.predict(x, verbose=0),
            dtype="float32",
            terms=6 + 8,
        )
    else:
        np.testing.assert_array_equal(
            model.predict(x, verbose=0), student.predict(x, verbose=0)
        )
    _assert_exports_the_student(model, x, tmp_path / "export")


def test_unbuilt_student_without_teacher_is_refused():
    # The teacher is the student's weights before fine-tuning; an unbuilt
    # student has none to copy.
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `model`. Expected a built model, "
        r"so that its weights can be copied: call `model.build\(input_shape\)`"
        r" or call it on a batch first. Received: model='subclassed",
    ):
        keras_sft.SFTModel(_SubclassedClassifier(name="subclassed"))


def _monitors(monitor, tmp_path, **mode):
    """Keras's three monitoring callbacks, watching `monitor`."""
    return [
        keras.callbacks.EarlyStopping(monitor=monitor, patience=9, **mode),
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, patience=9, **mode),
        keras.callbacks.ModelCheckpoint(
            str(tmp_path / "best.weights.h5"),
            monitor=monitor,
            save_best_only=True,
            save_weights_only=True,
            **mode,
        ),
    ]


@pytest.mark.parametrize(
    ("monitor", "best"),
    [
        ("task_loss", min),
        ("val_task_loss", min),
        ("distill_loss", min),
        ("val_distill_loss", min),
        ("val_loss", min),
        ("retained_accuracy", max),
        ("teacher_agreement", max),
    ],
)
def test_monitors_know_which_way_each_log_improves(monitor, best, tmp_path):
    x, y, _ = helpers.classification_data()
    model = keras_sft.SFTModel(helpers.mlp(), lambda_=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    forgetting = keras_sft.ForgettingMonitor(x[:8], y[:8])
    monitors = _monitors(monitor, tmp_path)

    history = model.fit(
        x,
        y,
        epochs=3,
        validation_split=0.25,
        verbose=0,
        callbacks=[forgetting, *monitors],
    )

    for callback in monitors:
        assert callback.best == best(history.history[monitor])
    assert os.path.exists(tmp_path / "best.weights.h5")


def test_monitors_keep_the_mode_they_are_given(tmp_path):
    x, y, _ = helpers.classification_data()
    model = keras_sft.SFTModel(helpers.mlp(), lambda_=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    monitors = _monitors("task_loss", tmp_path, mode="max")

    history = model.fit(x, y, epochs=3, verbose=0, callbacks=monitors)

    for callback in monitors:
        assert callback.mode == "max"
        assert callback.best == max(history.history["task_loss"])


def _graph_summaries(log_dir):
    """The `graph_keras_model` summaries under `log_dir`, by tag."""
    found = {}
    for root, _, files in os.walk(log_dir):
        for name in files:
            path = os.path.join(root, name)
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    plugin = value.metadata.plugin_data.plugin_name
                    if plugin == "graph_keras_model":
                        run = os.path.relpath(root, log_dir)
                        config = tf.make_ndarray(value.tensor).item()
                        found[f"{run}/{value.tag}"] = json.loads(config)
    return found


@pytest.mark.parametrize("functional", [True, False])
def test_tensorboard_draws_the_student_as_the_plain_model(functional, tmp_path):
    x, y, _ = helpers.classification_data(n=16)
    summaries = {}
    for tag in ("plain", "sft"):
        # The same layer names in both models.
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        if functional:
            model = helpers.mlp()
        else:
            model = _SubclassedClassifier(name="classifier")
        model(x[:1])
        if tag == "sft":
            model = keras_sft.SFTModel(model)
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        log_dir = str(tmp_path / tag)
        board = keras.callbacks.TensorBoard(log_dir)
        model.fit(x, y, epochs=1, verbose=0, callbacks=[board])
        summaries[tag] = _graph_summaries(log_dir)

    # Keras draws Functional and Sequential models only: their config (the
    # student itself is not compiled, the wrapper is).
    expected = {"train/keras"} if functional else set()
    assert set(summaries["plain"]) == set(summaries["sft"]) == expected
    for tag in expected:
        sft, plain = summaries["sft"][tag], summaries["plain"][tag]
        assert sft["config"] == plain["config"]
