"""`SFTModel.fit(anchor_x=...)`: the consistency term on anchor inputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from keras_sft import _anchors
from tests import helpers

LEARNING_RATE = 0.1
LAMBDA = 0.7


def _model(strategy=None, lambda_=LAMBDA, **kwargs):
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        student = helpers.mlp()
        model = keras_sft.SFTModel(
            student,
            teacher=helpers.perturbed_copy(student),
            lambda_=lambda_,
            # The expected steps below are computed with "mse".
            distance=kwargs.pop("distance", "mse"),
            **kwargs,
        )
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    return model


def _anchor_x(n=8, seed=5):
    return helpers.classification_data(n=n, seed=seed)[0]


def _numpy_mse(teacher_weights, student_weights, x):
    """`"mse"` between the teacher's and the student's logits on `x`."""
    teacher = helpers.numpy_mlp_logits(teacher_weights, x)
    student = helpers.numpy_mlp_logits(student_weights, x)
    return np.mean((teacher - student) ** 2)


def _expected_step(model, x, y, anchor_x, mode):
    """Weights after one SGD step on `task + lambda * D`, with `D` on the
    anchors (`"replace"`) or the mean of `D` on `x` and on the anchors
    (`"both"`), from gradients taken by separate tapes on the plain
    student."""
    student = keras.models.clone_model(model.student)
    student.set_weights(model.student.get_weights())
    teacher = model.teacher
    task = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    mse = keras.losses.MeanSquaredError()

    def gradient(loss):
        with tf.GradientTape() as tape:
            value = loss()
        return tape.gradient(value, student.trainable_weights)

    task_gradient = gradient(lambda: task(y, student(x, training=True)))
    anchor_gradient = gradient(
        lambda: mse(teacher(anchor_x), student(anchor_x, training=True))
    )
    new_gradient = gradient(lambda: mse(teacher(x), student(x, training=True)))
    weights = []
    for w, g_task, g_anchor, g_new in zip(
        student.get_weights(),
        task_gradient,
        anchor_gradient,
        new_gradient,
        strict=True,
    ):
        distill = g_anchor if mode == "replace" else (g_anchor + g_new) / 2
        weights.append(w - LEARNING_RATE * (g_task + LAMBDA * distill))
    return weights


@pytest.mark.parametrize("mode", ["replace", "both"])
def test_one_step_equals_separate_gradients(mode):
    model = _model()
    x, y, _ = helpers.classification_data(n=8)
    anchor_x = _anchor_x()
    initial = model.student.get_weights()
    teacher_weights = model.teacher.get_weights()
    expected = _expected_step(model, x, y, anchor_x, mode)
    history = model.fit(
        x, y, batch_size=8, verbose=0, anchor_x=anchor_x, anchor_mode=mode
    )
    helpers.assert_same_trained_weights(
        model.student.get_weights(), expected, initial, atol=1e-6
    )
    anchor_distance = _numpy_mse(teacher_weights, initial, anchor_x)
    new_distance = _numpy_mse(teacher_weights, initial, x)
    expected_distill = (
        anchor_distance
        if mode == "replace"
        else (anchor_distance + new_distance) / 2
    )
    logs = history.history
    assert logs["distill_loss"][0] == pytest.approx(expected_distill, rel=1e-5)
    assert logs["loss"][0] == pytest.approx(
        logs["task_loss"][0] + LAMBDA * expected_distill, rel=1e-5
    )


def test_replace_does_not_run_the_teacher_on_the_new_inputs(monkeypatch):
    model = _model(cache_teacher=False)
    seen = []
    call = model.teacher.call

    def recorded(inputs, *args, **kwargs):
        seen.append(int(inputs.shape[0]))
        return call(inputs, *args, **kwargs)

    monkeypatch.setattr(model.teacher, "call", recorded)
    x, y, _ = helpers.classification_data(n=8)
    model.fit(x, y, batch_size=8, verbose=0, anchor_x=_anchor_x(n=3))
    # Traced once, on the anchor batch of 8 only (3 anchors cycled).
    assert seen == [8]


@pytest.mark.parametrize(
    "mode, steps_per_epoch",
    [("replace", None), ("both", None), ("replace", 2)],
    ids=["replace", "both", "steps_per_epoch"],
)
def test_lambda_zero_with_anchors_equals_plain_fit(mode, steps_per_epoch):
    x, y, weights = helpers.classification_data(n=40)
    kwargs = {
        "batch_size": 8,
        "epochs": 2,
        "sample_weight": weights,
        "validation_split": 0.25,
        "steps_per_epoch": steps_per_epoch,
        "verbose": 0,
    }
    plain = _model(lambda_=0.0)
    initial = plain.student.get_weights()
    keras.utils.set_random_seed(1)
    plain_logs = plain.fit(x, y, **kwargs).history
    anchored = _model(lambda_=0.0)
    keras.utils.set_random_seed(1)
    anchored_logs = anchored.fit(
        x, y, anchor_x=_anchor_x(n=5), anchor_mode=mode, **kwargs
    ).history
    if not anchored.jit_compile:
        # The anchors add ops beside the plain step's, which run as they
        # would alone; XLA fuses the two graphs differently.
        for a, b in zip(
            anchored.student.get_weights(),
            plain.student.get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    helpers.assert_same_trained_weights(
        anchored.student.get_weights(), plain.student.get_weights(), initial
    )
    for key in ("task_loss", "val_loss", "val_task_loss", "val_distill_loss"):
        np.testing.assert_allclose(
            anchored_logs[key], plain_logs[key], rtol=1e-6
        )


def test_class_weight_keeps_its_meaning():
    x, y, _ = helpers.classification_data(n=24)
    class_weight = {0: 2.0, 1: 1.0, 2: 0.5}
    kwargs = {"batch_size": 8, "epochs": 2, "verbose": 0}
    plain = _model(lambda_=0.0)
    keras.utils.set_random_seed(1)
    plain.fit(x, y, class_weight=class_weight, **kwargs)
    anchored = _model(lambda_=0.0)
    keras.utils.set_random_seed(1)
    anchored.fit(
        x, y, class_weight=class_weight, anchor_x=_anchor_x(), **kwargs
    )
    for a, b in zip(
        anchored.student.get_weights(),
        plain.student.get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_validation_runs_without_anchors():
    model = _model()
    x, y, _ = helpers.classification_data(n=8)
    val_x, val_y, _ = helpers.classification_data(n=6, seed=3)
    teacher_weights = model.teacher.get_weights()
    logs = model.fit(
        x,
        y,
        batch_size=8,
        verbose=0,
        validation_data=(val_x, val_y),
        anchor_x=_anchor_x(),
    ).history
    expected = _numpy_mse(teacher_weights, model.student.get_weights(), val_x)
    assert logs["val_distill_loss"][0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("count", [3, 10], ids=["shorter", "longer"])
def test_anchors_are_cycled_in_full_batches(count):
    model = _model(cache_teacher=False)
    anchor_x = _anchor_x(n=count)
    batches = _anchors.anchor_batches(model, anchor_x, batch_size=4, reads=0)
    stream = np.concatenate(
        [b["inputs"].numpy() for b in batches.take(3 * count)]
    )
    assert stream.shape == (12 * count, anchor_x.shape[1])
    # Each pass over the anchors holds every anchor once, in a new order.
    passes = stream.reshape(12, count, -1)
    order = np.argsort(passes[..., 0], axis=1)
    for anchors_pass, indices in zip(passes, order, strict=True):
        np.testing.assert_array_equal(
            anchors_pass[indices], anchor_x[np.argsort(anchor_x[:, 0])]
        )
    assert len({tuple(p[:, 0]) for p in passes}) > 1


@pytest.mark.parametrize("count", [3, 30], ids=["shorter", "longer"])
def test_fit_cycles_anchors_shorter_and_longer_than_the_data(count):
    model = _model()
    x, y, _ = helpers.classification_data(n=16)
    logs = model.fit(
        x,
        y,
        batch_size=4,
        epochs=2,
        verbose=0,
        anchor_x=_anchor_x(n=count),
    ).history
    assert len(logs["loss"]) == 2
    assert all(np.isfinite(logs["distill_loss"]))
    assert min(logs["distill_loss"]) > 0


def test_dataset_of_anchors_equals_arrays():
    x, y, _ = helpers.classification_data(n=8)
    anchor_x = _anchor_x()
    arrays = _model()
    arrays.fit(x, y, batch_size=8, verbose=0, anchor_x=anchor_x)
    dataset = _model()
    dataset.fit(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
        shuffle=False,
        verbose=0,
        # `(x, y)` batches: the labels are dropped.
        anchor_x=tf.data.Dataset.from_tensor_slices((anchor_x, y)).batch(8),
    )
    helpers.assert_same_trained_weights(
        dataset.student.get_weights(),
        arrays.student.get_weights(),
        helpers.mlp().get_weights(),
        atol=1e-6,
    )


@pytest.mark.parametrize("mode", ["replace", "both"])
def test_cached_anchor_outputs_equal_the_live_teacher(mode, monkeypatch):
    x, y, weights = helpers.classification_data(n=24)
    kwargs = {
        "batch_size": 8,
        "epochs": 3,
        "sample_weight": weights,
        "verbose": 0,
        "anchor_x": _anchor_x(n=5),
        "anchor_mode": mode,
    }
    results = {}
    for cache_teacher in (True, False):
        model = _model(cache_teacher=cache_teacher)
        predicts = helpers.count_predicts(model, monkeypatch)
        keras.utils.set_random_seed(1)
        logs = model.fit(x, y, **kwargs).history
        results[cache_teacher] = (model.student.get_weights(), logs, predicts)
    cached, live = results[True], results[False]
    # The anchors are read by one `predict` pass; on one device the
    # labelled inputs' outputs (with "both") are stored by the first epoch,
    # with no pass of their own.
    assert len(cached[2]) == 1
    assert not live[2]
    helpers.assert_same_trained_weights(
        cached[0], live[0], helpers.mlp().get_weights()
    )
    for key, values in live[1].items():
        np.testing.assert_allclose(cached[1][key], values, rtol=1e-5)


@pytest.mark.parametrize("mode", ["replace", "both"])
def test_mirrored_equals_one_device(mode):
    x, y, weights = helpers.classification_data(n=32)
    # One anchor batch holds every anchor: the term does not depend on the
    # order of the anchor stream, which the strategies draw apart.
    anchor_x = _anchor_x(n=8)

    def train(strategy):
        model = _model(strategy, cache_teacher=False)
        history = model.fit(
            x,
            y,
            batch_size=8,
            epochs=2,
            shuffle=False,
            sample_weight=weights,
            verbose=0,
            anchor_x=anchor_x,
            anchor_mode=mode,
        )
        return model.student.get_weights(), history.history

    keras.utils.set_random_seed(0)
    helpers.assert_mirrored_equals_one_device(
        train, helpers.mlp().get_weights()
    )


def test_mixed_precision_step_matches_float32():
    x, y, _ = helpers.classification_data(n=8)
    anchor_x = _anchor_x()
    deltas = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.config.set_dtype_policy(policy)
        model = _model()
        initial = model.student.get_weights()
        model.fit(x, y, batch_size=8, verbose=0, anchor_x=anchor_x)
        deltas[policy] = [
            w - w0
            for w, w0 in zip(model.student.get_weights(), initial, strict=True)
        ]
    keras.config.set_dtype_policy("float32")
    helpers.assert_step_matches_float32(
        deltas["mixed_bfloat16"], deltas["float32"], relative=0.05
    )


def test_signature_lists_the_anchor_options():
    parameters = keras_sft.SFTModel.fit.__signature__.parameters
    assert list(parameters)[-3:] == [
        "anchor_x",
        "anchor_mode",
        "anchor_batch_size",
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"anchor_x": [[1.0, 2.0]]},
            r"Invalid value for argument `anchor_x`\. Expected a NumPy array "
            r"or tensor .* Received: anchor_x of type list",
        ),
        (
            {"anchor_x": np.zeros((0, 6), "float32")},
            r"Invalid value for argument `anchor_x`\. Expected arrays with the "
            r"same number \(> 0\) of examples .* Received: anchor_x with "
            r"first dimensions \[0\]",
        ),
        (
            {"anchor_x": np.zeros((4, 5), "float32")},
            r"Invalid value for argument `anchor_x`\. Expected inputs of the "
            r"student's input shapes \[\(None, 6\)\]\. Received: anchor_x of "
            r"shapes \[\(4, 5\)\]",
        ),
        (
            {"anchor_x": np.full((4, 6), np.nan, "float32")},
            r"Invalid value for argument `anchor_x`\. Expected finite "
            r"values\. Received: anchor_x with 24 NaN or Inf values",
        ),
        (
            {
                "anchor_x": tf.data.Dataset.from_tensor_slices(
                    np.zeros((0, 6), "float32")
                ).batch(2)
            },
            r"Invalid value for argument `anchor_x`\. Expected a non-empty "
            r"dataset\. Received: an empty dataset",
        ),
        (
            {
                "anchor_x": tf.data.Dataset.from_tensor_slices(
                    np.zeros((4, 3), "float32")
                ).batch(2)
            },
            r"Expected inputs of the student's input shapes \[\(None, 6\)\]\. "
            r"Received: anchor_x of shapes \[\(None, 3\)\]",
        ),
        (
            {"anchor_x": np.zeros((4, 6), "float32"), "anchor_mode": "add"},
            r"Invalid value for argument `anchor_mode`\. Expected one of "
            r"\('replace', 'both'\)\. Received: anchor_mode='add'",
        ),
        (
            {"anchor_x": np.zeros((4, 6), "float32"), "anchor_batch_size": 0},
            r"Invalid value for argument `anchor_batch_size`\. Expected an "
            r"int > 0\. Received: anchor_batch_size=0",
        ),
        (
            {"anchor_batch_size": 4},
            r"Invalid value for argument `anchor_batch_size`\. Expected None "
            r"without `anchor_x`\. Received: anchor_batch_size=4",
        ),
        (
            {
                "anchor_x": tf.data.Dataset.from_tensor_slices(
                    np.zeros((4, 6), "float32")
                ).batch(2),
                "anchor_batch_size": 2,
            },
            r"Invalid value for argument `anchor_batch_size`\. Expected None "
            r"when `anchor_x` is a dataset .* Received: anchor_batch_size=2",
        ),
    ],
    ids=[
        "type",
        "empty",
        "shape",
        "non_finite",
        "empty_dataset",
        "dataset_shape",
        "mode",
        "batch_size",
        "batch_size_without_anchors",
        "batch_size_with_dataset",
    ],
)
def test_bad_anchor_arguments_raise(kwargs, message):
    model = _model()
    x, y, _ = helpers.classification_data(n=8)
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, verbose=0, **kwargs)
