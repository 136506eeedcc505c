"""SFTModel on dense (per-pixel) outputs and on multi-output students."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers

HEIGHT, WIDTH, CHANNELS, CLASSES, LABELS = 3, 4, 2, 3, 2


def _initializer(seed):
    """A seeded initializer: models built twice start from the same point."""
    return keras.initializers.GlorotUniform(seed)


def _dense_model(name="seg"):
    """Per-pixel logits `(batch, H, W, classes)` from a 1x1 convolution."""
    inputs = keras.Input((HEIGHT, WIDTH, CHANNELS))
    outputs = keras.layers.Conv2D(
        CLASSES, 1, kernel_initializer=_initializer(0), name=name
    )(inputs)
    return keras.Model(inputs, outputs)


def _two_head_model(as_dict=False):
    """A per-pixel head `seg` and an image-level head `cls`."""
    inputs = keras.Input((HEIGHT, WIDTH, CHANNELS))
    seg = keras.layers.Conv2D(
        CLASSES, 1, kernel_initializer=_initializer(0), name="seg"
    )(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    cls = keras.layers.Dense(
        LABELS, kernel_initializer=_initializer(1), name="cls"
    )(pooled)
    outputs = {"seg": seg, "cls": cls} if as_dict else [seg, cls]
    return keras.Model(inputs, outputs)


def _data(n=10, seed=0):
    """Images, per-pixel labels, image labels and both kinds of weights."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, HEIGHT, WIDTH, CHANNELS)).astype("float32")
    masks = rng.integers(0, CLASSES, size=(n, HEIGHT, WIDTH)).astype("int32")
    labels = rng.integers(0, LABELS, size=n).astype("int32")
    weights = rng.uniform(0.1, 2.0, size=n).astype("float32")
    pixel_weights = rng.uniform(0.1, 2.0, size=(n, HEIGHT, WIDTH))
    return x, masks, labels, weights, pixel_weights.astype("float32")


def _numpy_seg(model, x):
    kernel, bias = model.get_layer("seg").get_weights()
    return x @ kernel[0, 0] + bias


def _numpy_cls(model, x):
    kernel, bias = model.get_layer("cls").get_weights()
    return x.mean(axis=(1, 2)) @ kernel + bias


def _cross_entropy(logits, labels):
    log_probs = helpers.log_softmax(logits)
    return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


def _distance(t, s, distance):
    if distance == "mse":
        return ((s - t) ** 2).mean(-1)
    log_p, log_q = helpers.log_softmax(t), helpers.log_softmax(s)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def _weighted_mean(values, weights):
    """Keras's "sum_over_batch_size" over every position, epoch-averaged."""
    if weights is None:
        return values.mean()
    # Per-sample weights cover every position of their sample.
    weights = weights.reshape(
        weights.shape + (1,) * (values.ndim - weights.ndim)
    )
    return (values * weights).sum() / values.size


def _sft(student, **kwargs):
    teacher = helpers.perturbed_copy(student, scale=0.5)
    # "mse" unless asked: the expectations below compute it.
    kwargs.setdefault("distance", "mse")
    return keras_sft.SFTModel(student, teacher=teacher, **kwargs)


# 1. Per-pixel logits.


@pytest.mark.parametrize("distance", ["mse", "kl"])
@pytest.mark.parametrize("weighting", [None, "sample", "pixel"])
def test_dense_logs_match_numpy(distance, weighting):
    x, masks, _, weights, pixel_weights = _data()
    sample_weight = {None: None, "sample": weights, "pixel": pixel_weights}[
        weighting
    ]
    model = _sft(_dense_model(), lambda_=0.6, distance=distance)
    model.compile(optimizer="sgd")
    # Batches of 4, 4, 2: the epoch mean must weigh the last one less.
    logs = model.evaluate(
        x,
        masks,
        sample_weight=sample_weight,
        batch_size=4,
        return_dict=True,
        verbose=0,
    )
    s = _numpy_seg(model.student, x)
    t = _numpy_seg(model.teacher, x)
    task = _weighted_mean(_cross_entropy(s, masks), sample_weight)
    distill = _weighted_mean(_distance(t, s, distance), sample_weight)
    assert logs["task_loss"] == pytest.approx(task, rel=1e-5)
    assert logs["distill_loss"] == pytest.approx(distill, rel=1e-5)
    assert logs["loss"] == pytest.approx(task + 0.6 * distill, rel=1e-5)


def test_dense_sample_weights_scale_whole_images():
    x, masks, _, weights, _ = _data(n=4)
    model = _sft(_dense_model())
    model.compile(optimizer="sgd")
    per_image = model.evaluate(
        x,
        masks,
        sample_weight=weights,
        batch_size=4,
        return_dict=True,
        verbose=0,
    )
    per_pixel = model.evaluate(
        x,
        masks,
        sample_weight=np.repeat(weights, HEIGHT * WIDTH).reshape(masks.shape),
        batch_size=4,
        return_dict=True,
        verbose=0,
    )
    for key in ("task_loss", "distill_loss"):
        assert per_image[key] == pytest.approx(per_pixel[key], rel=1e-6)


def _epoch(strategy, two_heads):
    x, masks, labels, weights, _ = _data(n=16)
    with strategy.scope():
        student = _two_head_model() if two_heads else _dense_model()
        model = _sft(student, lambda_=1.0)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    history = model.fit(
        x,
        [masks, labels] if two_heads else masks,
        sample_weight=weights,
        batch_size=8,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    return model.student.get_weights(), history.history


@pytest.mark.parametrize("two_heads", [False, True])
def test_mirrored_equals_one_device(two_heads):
    initial = (_two_head_model() if two_heads else _dense_model()).get_weights()
    helpers.assert_mirrored_equals_one_device(
        lambda strategy: _epoch(strategy, two_heads),
        initial,
        through_one_device=True,
    )


# 2. Two outputs: task and distance per output.


def _two_head_expectations(student, teacher, x, masks, labels, weights):
    s_seg, s_cls = _numpy_seg(student, x), _numpy_cls(student, x)
    t_seg, t_cls = _numpy_seg(teacher, x), _numpy_cls(teacher, x)
    return {
        "seg_loss": _weighted_mean(_cross_entropy(s_seg, masks), weights),
        "cls_loss": _weighted_mean(_cross_entropy(s_cls, labels), weights),
        "seg_distill_loss": _weighted_mean(
            _distance(t_seg, s_seg, "mse"), weights
        ),
        "cls_distill_loss": _weighted_mean(
            _distance(t_cls, s_cls, "mse"), weights
        ),
    }


@pytest.mark.parametrize("as_dict", [False, True])
@pytest.mark.parametrize("use_weights", [False, True])
def test_two_outputs_log_each_term(as_dict, use_weights):
    x, masks, labels, weights, _ = _data()
    weights = weights if use_weights else None
    model = _sft(
        _two_head_model(as_dict),
        lambda_=0.5,
        distill_weights={"cls": 3.0},
    )
    model.compile(
        optimizer="sgd",
        loss_weights={"seg": 1.0, "cls": 0.25},
        metrics={"cls": ["accuracy"]},
    )
    y = {"seg": masks, "cls": labels} if as_dict else [masks, labels]
    logs = model.evaluate(
        x, y, sample_weight=weights, batch_size=4, return_dict=True, verbose=0
    )
    expected = _two_head_expectations(
        model.student, model.teacher, x, masks, labels, weights
    )
    task = expected["seg_loss"] + 0.25 * expected["cls_loss"]
    distill = expected["seg_distill_loss"] + 3.0 * expected["cls_distill_loss"]
    for key, value in expected.items():
        assert logs[key] == pytest.approx(value, rel=1e-5), key
    assert logs["task_loss"] == pytest.approx(task, rel=1e-5)
    assert logs["distill_loss"] == pytest.approx(distill, rel=1e-5)
    assert logs["loss"] == pytest.approx(task + 0.5 * distill, rel=1e-5)
    assert model.metrics_names[:7] == [
        "loss",
        "task_loss",
        "distill_loss",
        "seg_loss",
        "cls_loss",
        "seg_distill_loss",
        "cls_distill_loss",
    ]


def test_per_output_losses_follow_compile():
    x, masks, labels, _, _ = _data()
    model = _sft(_two_head_model(), lambda_=0.5, distill_outputs=["cls"])
    # No task loss for `seg`; a plain function for `cls`.
    model.compile(
        optimizer="sgd",
        loss={
            "seg": None,
            "cls": lambda y_true, y_pred: (
                keras.losses.sparse_categorical_crossentropy(
                    y_true, y_pred, from_logits=True
                )
            ),
        },
    )
    logs = model.evaluate(
        x, [masks, labels], batch_size=4, return_dict=True, verbose=0
    )
    expected = _two_head_expectations(
        model.student, model.teacher, x, masks, labels, None
    )
    assert set(logs) == {"loss", "task_loss", "distill_loss"} | {
        "cls_loss",
        "cls_distill_loss",
    }
    assert logs["task_loss"] == pytest.approx(expected["cls_loss"], rel=1e-5)
    assert logs["distill_loss"] == pytest.approx(
        expected["cls_distill_loss"], rel=1e-5
    )


def test_an_output_named_task_logs_its_task_loss_apart():
    # `task_loss` is the weighted sum; the output `task` keeps its own.
    x, masks, labels, _, _ = _data()
    inner = _two_head_model(as_dict=True)
    student = keras.Model(
        inner.inputs,
        {
            "task": inner.get_layer("seg").output,
            "distill": inner.get_layer("cls").output,
        },
    )
    model = _sft(student, lambda_=0.5)
    model.compile(optimizer="sgd", loss_weights={"task": 1.0, "distill": 0.25})
    logs = model.evaluate(
        x,
        {"task": masks, "distill": labels},
        batch_size=4,
        return_dict=True,
        verbose=0,
    )
    expected = _two_head_expectations(
        inner, model.teacher, x, masks, labels, None
    )
    assert model.metrics_names[:7] == [
        "loss",
        "task_loss",
        "distill_loss",
        "task_task_loss",
        "distill_task_loss",
        "task_distill_loss",
        "distill_distill_loss",
    ]
    assert logs["task_task_loss"] == pytest.approx(
        expected["seg_loss"], rel=1e-5
    )
    assert logs["distill_task_loss"] == pytest.approx(
        expected["cls_loss"], rel=1e-5
    )
    assert logs["task_loss"] == pytest.approx(
        expected["seg_loss"] + 0.25 * expected["cls_loss"], rel=1e-5
    )


def test_teacher_with_a_subset_of_the_outputs():
    # Learning-without-Forgetting shape: the old model had only `cls`; the
    # student has grown `seg`; only `cls` is kept close to the teacher.
    student = _two_head_model()
    old = keras.Model(student.inputs, student.get_layer("cls").output)
    teacher = keras_sft.clone_teacher(old)
    teacher.set_weights([w + 0.5 for w in teacher.get_weights()])
    model = keras_sft.SFTModel(
        student, teacher=teacher, lambda_=1.0, distance="mse"
    )
    model.compile(optimizer="sgd")
    x, masks, labels, _, _ = _data()
    logs = model.evaluate(
        x, [masks, labels], batch_size=4, return_dict=True, verbose=0
    )
    s_cls = _numpy_cls(student, x)
    t_cls = _numpy_cls(teacher, x)
    distill = _distance(t_cls, s_cls, "mse").mean()
    assert "seg_distill_loss" not in logs
    assert logs["cls_distill_loss"] == pytest.approx(distill, rel=1e-5)
    assert logs["distill_loss"] == pytest.approx(distill, rel=1e-5)
    model.fit(x, [masks, labels], batch_size=5, epochs=1, verbose=0)


# 3. Mixed precision and saving for a two-output model.


def _two_head_step(policy):
    keras.config.set_dtype_policy(policy)
    x, masks, labels, weights, _ = _data(n=8)
    model = _sft(_two_head_model(), lambda_=1.0)
    initial = [w.copy() for w in model.student.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(
        x, [masks, labels], sample_weight=weights, batch_size=8, verbose=0
    )
    deltas = [
        a - b for a, b in zip(model.student.get_weights(), initial, strict=True)
    ]
    return model, deltas


def test_two_outputs_mixed_float16_step_matches_float32():
    _, deltas32 = _two_head_step("float32")
    model, deltas16 = _two_head_step("mixed_float16")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert max(np.abs(d).max() for d in deltas32) > 1e-2
    for d16, d32 in zip(deltas16, deltas32, strict=True):
        np.testing.assert_allclose(d16, d32, atol=2e-3 * np.abs(d32).max())


def test_two_outputs_keras_round_trip(tmp_path):
    x, masks, labels, _, _ = _data()
    model = _sft(
        _two_head_model(as_dict=True),
        lambda_=0.3,
        distill_outputs=["seg"],
        distill_weights={"seg": 2.0},
    )
    model.compile(optimizer="adam", loss_weights={"seg": 1.0, "cls": 0.5})
    y = {"seg": masks, "cls": labels}
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    loaded = helpers.keras_round_trip(model, tmp_path, "two_heads.keras")

    assert loaded.distill_outputs == ["seg"]
    assert loaded.distill_weights == {"seg": 2.0}
    predicted, expected = loaded.predict(x, verbose=0), model.predict(x)
    assert set(predicted) == {"seg", "cls"}
    for key in expected:
        np.testing.assert_array_equal(predicted[key], expected[key])
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    loaded_logs = loaded.evaluate(x, y, return_dict=True, verbose=0)
    assert loaded_logs == pytest.approx(logs, rel=1e-6)
    assert "cls_distill_loss" not in loaded_logs
    loaded.fit(x, y, epochs=1, verbose=0)


def test_saved_model_serves_every_output(tmp_path):
    student = _two_head_model(as_dict=True)
    path = str(tmp_path / "saved")
    student.export(path, verbose=False)
    served = tf.saved_model.load(path)
    x = _data()[0]
    outputs = served.serve(x)
    assert set(outputs) == {"seg", "cls"}
    np.testing.assert_allclose(
        outputs["seg"], _numpy_seg(student, x), atol=1e-5
    )


# 4. Bad arguments.


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"distill_outputs": "seg"},
            r"Invalid value for argument `distill_outputs`. Expected None or "
            r"a list of distinct output names. Received: "
            r"distill_outputs='seg'",
        ),
        (
            {"distill_outputs": []},
            r"Invalid value for argument `distill_outputs`. Expected at least "
            r"one output to keep close, or layers named in `distill_features`. "
            r"Received: distill_outputs=\[\]",
        ),
        (
            {"distill_outputs": ["seg", "seg"]},
            r"Received: distill_outputs=\['seg', 'seg'\]",
        ),
        (
            {"distill_outputs": ["box"]},
            r"Invalid value for argument `distill_outputs`. Expected names of "
            r"outputs of both the student and the teacher, among "
            r"\['seg', 'cls'\]. Received: distill_outputs=\['box'\]",
        ),
        (
            {"distill_weights": {"cls": -1.0}},
            r"Invalid value for argument `distill_weights`. Expected None or "
            r"a dict mapping output names to floats >= 0. Received: "
            r"distill_weights=\{'cls': -1.0\}",
        ),
        ({"distill_weights": [1.0]}, r"Received: distill_weights=\[1.0\]"),
        (
            {"distill_outputs": ["seg"], "distill_weights": {"cls": 1.0}},
            r"Invalid value for argument `distill_weights`. Expected keys "
            r"among the distilled outputs and features \['seg'\]. Received: "
            r"distill_weights=\{'cls': 1.0\}",
        ),
    ],
)
def test_bad_output_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_sft.SFTModel(_two_head_model(), **kwargs)


def test_teacher_outputs_must_be_student_outputs():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `teacher`. Expected every teacher "
        r"output to have a student output of the same name \(or name the "
        r"outputs to keep close with `distill_outputs`\). Received: teacher "
        r"outputs \['box'\], student outputs \['seg', 'cls'\]",
    ):
        keras_sft.SFTModel(_two_head_model(), teacher=_dense_model("box"))


def test_loss_dict_keys_must_be_outputs():
    model = keras_sft.SFTModel(_two_head_model())
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `loss`. Expected keys among the "
        r"student's outputs \['seg', 'cls'\]. Received: loss=\{'box': 'mse'\}",
    ):
        model.compile(loss={"box": "mse"})


class Wrapped(keras.Model):
    """A subclassed student: no symbolic outputs, names known at call."""

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, inputs):
        return self.inner(inputs)


def test_subclassed_two_output_student_pairs_outputs_at_call():
    x, masks, labels, weights, _ = _data()
    inner = _two_head_model(as_dict=True)
    teacher_inner = helpers.perturbed_copy(inner, scale=0.5)
    student, teacher = Wrapped(inner), Wrapped(teacher_inner)
    student(x[:1]), teacher(x[:1])
    model = keras_sft.SFTModel(
        student, teacher=teacher, lambda_=0.5, distance="mse"
    )
    model.compile(optimizer="sgd")
    y = {"seg": masks, "cls": labels}
    logs = model.evaluate(
        x, y, sample_weight=weights, batch_size=4, return_dict=True, verbose=0
    )
    expected = _two_head_expectations(
        inner, teacher_inner, x, masks, labels, weights
    )
    task = expected["seg_loss"] + expected["cls_loss"]
    distill = expected["seg_distill_loss"] + expected["cls_distill_loss"]
    assert logs["task_loss"] == pytest.approx(task, rel=1e-5)
    assert logs["distill_loss"] == pytest.approx(distill, rel=1e-5)


def test_subclassed_student_checks_distill_outputs_at_call():
    x, masks, labels, _, _ = _data()
    inner = _two_head_model(as_dict=True)
    student, teacher = Wrapped(inner), Wrapped(_two_head_model(True))
    student(x[:1]), teacher(x[:1])
    model = keras_sft.SFTModel(
        student, teacher=teacher, distill_outputs=["box"]
    )
    model.compile(optimizer="sgd")
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `distill_outputs`. Expected names "
        r"of outputs of both the student and the teacher, among "
        r"\['seg', 'cls'\]. Received: distill_outputs=\['box'\]",
    ):
        model.evaluate(x, {"seg": masks, "cls": labels}, verbose=0)


def test_loss_list_needs_one_entry_per_output():
    model = keras_sft.SFTModel(_two_head_model())
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `loss_weights`. Expected one entry "
        r"per student output \['seg', 'cls'\]. Received: "
        r"loss_weights=\[1.0\]",
    ):
        model.compile(loss_weights=[1.0])


def test_single_output_student_with_a_larger_teacher():
    x, masks, _, weights, _ = _data()
    student = _dense_model()
    teacher = helpers.perturbed_copy(_two_head_model(), scale=0.5)
    model = keras_sft.SFTModel(
        student,
        teacher=teacher,
        lambda_=1.0,
        distance="mse",
        distill_outputs=["seg"],
    )
    model.compile(optimizer="sgd")
    logs = model.evaluate(
        x,
        masks,
        sample_weight=weights,
        batch_size=4,
        return_dict=True,
        verbose=0,
    )
    distance = _distance(_numpy_seg(teacher, x), _numpy_seg(student, x), "mse")
    expected = _weighted_mean(distance, weights)
    assert logs["distill_loss"] == pytest.approx(expected, rel=1e-5)
