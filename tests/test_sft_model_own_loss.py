"""`SFTModel` of students whose class defines its own `compute_loss`: a
keras-hub RetinaNet detector on small synthetic scenes, and a plain
subclassed model. Their own loss is `task_loss`, on the labels as they
come; the consistency term is on the outputs the user names."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_sft
from tests import helpers

# Not skipped as a module: the subclassed model's tests need no keras-hub.
try:
    from tests import hub_tasks
except ImportError:
    hub_tasks = None

_needs_keras_hub = pytest.mark.skipif(
    hub_tasks is None, reason="keras-hub is not installed"
)


def _detector():
    return hub_tasks.retinanet_object_detector()


def _copy(model, build):
    """A second `model` of the same weights, made by `build`."""
    other = build()
    other.set_weights(model.get_weights())
    return other


def _numpy(values):
    return keras.tree.map_structure(ops.convert_to_numpy, values)


@_needs_keras_hub
@pytest.mark.slow
def test_detector_at_lambda_zero_trains_as_its_own_fit():
    images, labels = hub_tasks.scenes_with_boxes(8)
    plain = _detector()
    initial = plain.get_weights()
    student = _copy(plain, _detector)
    plain.compile(optimizer=keras.optimizers.SGD(1e-4))
    model = keras_sft.SFTModel(student, lambda_=0.0)
    model.compile(optimizer=keras.optimizers.SGD(1e-4))

    expected = plain.fit(
        images, labels, batch_size=4, epochs=1, shuffle=False, verbose=0
    ).history
    logs = model.fit(
        images, labels, batch_size=4, epochs=1, shuffle=False, verbose=0
    ).history

    # The same two steps in two graphs: the ResNet's and the heads'
    # 3x3 convolutions over 64 and 256 channels, then the sums over the
    # 720 anchors of the losses.
    terms = 9 * 64 + 9 * 256 + 720
    helpers.assert_close_across_op_orders(
        logs["task_loss"], expected["loss"], dtype="float32", terms=terms
    )
    helpers.assert_close_across_op_orders(
        logs["loss"], expected["loss"], dtype="float32", terms=terms
    )
    helpers.assert_close_across_op_orders(
        student.get_weights(),
        plain.get_weights(),
        dtype="float32",
        terms=terms,
    )
    assert (
        max(
            np.abs(a - b).max()
            for a, b in zip(student.get_weights(), initial, strict=True)
        )
        > 1e-4
    )
    for weight, value in zip(model.teacher.get_weights(), initial, strict=True):
        np.testing.assert_array_equal(weight, value)


@_needs_keras_hub
def test_detector_task_loss_is_its_own_and_the_term_is_on_named_outputs():
    images, labels = hub_tasks.scenes_with_boxes(4)
    detector = _detector()
    model = keras_sft.SFTModel(
        detector, lambda_=0.5, distance="mse", distill_outputs=["cls_logits"]
    )
    model.compile(optimizer="sgd")
    # The student moves away from its teacher, as in fine-tuning.
    rng = np.random.default_rng(0)
    for variable in detector.trainable_weights:
        noise = rng.normal(scale=0.05, size=variable.shape)
        variable.assign(variable + noise.astype(variable.dtype))
    weights = np.array([1.0, 0.0, 2.0, 1.0], "float32")

    logs = model.test_on_batch(
        images, labels, sample_weight=weights, return_dict=True
    )

    student = _numpy(detector(images, training=False))
    teacher = _numpy(model.teacher(images, training=False))
    # RetinaNet weighs its anchors itself: its loss takes no sample weight.
    task_loss = float(
        detector.compute_loss(images, labels, detector(images), None)
    )
    squared = np.square(
        student["cls_logits"].astype("float64") - teacher["cls_logits"]
    ).mean(axis=-1)
    distill_loss = (squared * weights[:, None]).sum() / squared.size
    assert distill_loss > 1e-3
    assert sorted(logs) == [
        "cls_logits_distill_loss",
        "distill_loss",
        "loss",
        "task_loss",
    ]
    np.testing.assert_allclose(logs["task_loss"], task_loss, rtol=1e-5)
    np.testing.assert_allclose(logs["distill_loss"], distill_loss, rtol=1e-4)
    np.testing.assert_allclose(
        logs["loss"], task_loss + 0.5 * distill_loss, rtol=1e-5
    )


@_needs_keras_hub
@pytest.mark.slow
def test_detector_evaluates_and_predicts_as_the_detector_does():
    images, labels = hub_tasks.scenes_with_boxes(8)
    detector = _detector()
    model = keras_sft.SFTModel(detector, lambda_=0.5)
    model.compile(optimizer="sgd")

    logs = model.evaluate(
        images, labels, batch_size=4, verbose=0, return_dict=True
    )
    predicted = model.predict(images, batch_size=4, verbose=0)
    cached = next(
        iter(keras_sft.cache_teacher_outputs(model.teacher, (images, labels)))
    )

    expected = detector.evaluate(
        images, labels, batch_size=4, verbose=0, return_dict=True
    )
    np.testing.assert_allclose(logs["task_loss"], expected["loss"], rtol=1e-5)
    # Both in inference mode with the same weights.
    assert logs["distill_loss"] == 0.0
    # Decoded boxes, as the detector's own `predict` gives them.
    assert sorted(predicted) == [
        "boxes",
        "confidence",
        "labels",
        "num_detections",
    ]
    expected = detector.predict(images, batch_size=4, verbose=0)
    for name in ("labels", "num_detections"):
        np.testing.assert_array_equal(predicted[name], expected[name])
    # The same graph traced twice: the heads' 3x3 convolutions over 256
    # channels, then the box decoding.
    helpers.assert_close_across_op_orders(
        [predicted["boxes"], predicted["confidence"]],
        [expected["boxes"], expected["confidence"]],
        dtype="float32",
        terms=9 * 256 + 9 * 64,
    )
    # The teacher's cached outputs are its raw outputs, not decoded boxes.
    teacher = _numpy(model.teacher(images[:1], training=False))
    helpers.assert_close_across_op_orders(
        {name: value[None] for name, value in _numpy(cached[3]).items()},
        teacher,
        dtype="float32",
        terms=9 * 256 + 9 * 64,
    )


@keras.saving.register_keras_serializable(package="keras_sft_tests")
class MeanRegressor(keras.Model):
    """Three outputs whose mean its own loss regresses on `y` (weighed by
    `sample_weight`), with an L2 penalty on its kernel."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(
            3, kernel_regularizer=keras.regularizers.L2(0.1)
        )

    def call(self, x):
        return self.dense(x)

    def compute_loss(self, x, y, y_pred, sample_weight, training=True):
        error = ops.square(ops.mean(y_pred, axis=-1) - y)
        if sample_weight is not None:
            error = error * sample_weight
        return ops.mean(error) + ops.sum(self.losses)


def _regressor():
    model = MeanRegressor()
    model(np.zeros((1, 4), "float32"))
    return model


def _regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.normal(size=16).astype("float32")
    weights = rng.uniform(0.5, 2.0, size=16).astype("float32")
    return x, y, weights


def test_own_loss_at_lambda_zero_trains_as_the_model_s_fit():
    x, y, weights = _regression_data()
    plain = _regressor()
    student = _copy(plain, _regressor)
    plain.compile(optimizer=keras.optimizers.SGD(0.1))
    model = keras_sft.SFTModel(student, lambda_=0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))

    expected = plain.fit(
        x, y, sample_weight=weights, batch_size=8, shuffle=False, verbose=0
    ).history
    logs = model.fit(
        x, y, sample_weight=weights, batch_size=8, shuffle=False, verbose=0
    ).history

    # The model's loss, its regularization counted once: a dense layer of 4
    # inputs, then the means over 3 outputs and 8 examples.
    helpers.assert_close_across_op_orders(
        [logs["task_loss"], logs["loss"]],
        [expected["loss"], expected["loss"]],
        dtype="float32",
        terms=4 + 3 + 8,
    )
    helpers.assert_close_across_op_orders(
        student.get_weights(),
        plain.get_weights(),
        dtype="float32",
        terms=4 + 3 + 8,
    )


def test_own_loss_takes_no_loss_weights():
    model = keras_sft.SFTModel(_regressor())
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `loss_weights`\. Expected None "
        r"where the student's own `compute_loss` is the task loss \(that of "
        r"MeanRegressor: compile the student to weigh its losses\)\. "
        r"Received: loss_weights=\[2\.0\]",
    ):
        model.compile(optimizer="sgd", loss_weights=[2.0])
