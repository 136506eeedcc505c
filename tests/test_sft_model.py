import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers


def _sft(student=None, teacher_noise=0.3, **kwargs):
    """An SFTModel whose teacher differs from the student, so D != 0."""
    student = student or helpers.mlp()
    teacher = helpers.perturbed_copy(student, scale=teacher_noise)
    # "mse" unless asked: `_numpy_terms` and the tolerances below assume it.
    kwargs.setdefault("distance", "mse")
    return keras_sft.SFTModel(student, teacher=teacher, **kwargs)


def _numpy_terms(model, x, y, weights=None, distance="mse", temperature=1.0):
    """Per-sample cross-entropy and distance of `mlp()` models, in numpy."""
    s = helpers.numpy_mlp_logits(model.student.get_weights(), x)
    t = helpers.numpy_mlp_logits(model.teacher.get_weights(), x)
    ce = -helpers.log_softmax(s)[np.arange(len(y)), y]
    if distance == "mse":
        d = ((s - t) ** 2).mean(-1)
    elif distance == "squared_l2":
        d = ((s - t) ** 2).sum(-1)
    else:
        log_p = helpers.log_softmax(t / temperature)
        log_q = helpers.log_softmax(s / temperature)
        d = temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)
    w = np.ones(len(y)) if weights is None else weights
    # Keras's "sum_over_batch_size": the weighted sum over the number of
    # samples, which the epoch average reproduces over uneven batches.
    return (ce * w).sum() / len(y), (d * w).sum() / len(y)


# 1. The teacher is frozen and the student is the object passed in.


def test_teacher_is_bit_identical_after_fit():
    student = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(3),
        ]
    )
    model = keras_sft.SFTModel(student, lambda_=1.0)
    before = [w.copy() for w in model.teacher.get_weights()]
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    x, y, _ = helpers.classification_data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)

    assert model.student is student
    assert not model.teacher.trainable
    teacher_ids = {id(v) for v in model.teacher.weights}
    assert not teacher_ids & {id(v) for v in model.trainable_weights}
    for after, expected in zip(
        model.teacher.get_weights(), before, strict=True
    ):
        np.testing.assert_array_equal(after, expected)
    # The student did train, including its BatchNorm statistics.
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(model.student.get_weights(), before, strict=True)
    ]
    assert all(changed)


def test_explicit_teacher_is_frozen():
    student = helpers.mlp()
    teacher = helpers.perturbed_copy(student)
    model = keras_sft.SFTModel(student, teacher=teacher)
    assert model.teacher is teacher
    assert not teacher.trainable


# 2. lambda_=0 is plain fine-tuning.


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        # The step's update is fused, plain `fit`'s is Keras's.
        lambda: keras.optimizers.Adam(0.01),
    ],
    ids=["sgd", "adam"],
)
def test_lambda_zero_equals_plain_fit(optimizer):
    x, y, _ = helpers.classification_data(n=40)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    plain = helpers.mlp(dropout=0.3)
    plain.compile(optimizer=optimizer(), loss=loss)
    plain.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    model = _sft(helpers.mlp(dropout=0.3), lambda_=0.0)
    model.compile(optimizer=optimizer())
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    for a, b in zip(
        model.student.get_weights(), plain.get_weights(), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)


# 3. Logged terms equal numpy computations.


@pytest.mark.parametrize("distance", ["mse", "squared_l2", "kl"])
@pytest.mark.parametrize("use_weights", [False, True])
def test_evaluate_logs_match_numpy(distance, use_weights):
    x, y, weights = helpers.classification_data(n=30)
    weights = weights if use_weights else None
    model = _sft(lambda_=0.7, distance=distance, temperature=2.0)
    model.compile(optimizer="sgd")
    # Batches of 8, 8, 8, 6: the epoch average must weigh the last one less.
    logs = model.evaluate(
        x, y, sample_weight=weights, batch_size=8, return_dict=True, verbose=0
    )
    task, distill = _numpy_terms(model, x, y, weights, distance, 2.0)
    assert logs["task_loss"] == pytest.approx(task, rel=1e-5)
    assert logs["distill_loss"] == pytest.approx(distill, rel=1e-5)
    assert logs["loss"] == pytest.approx(task + 0.7 * distill, rel=1e-5)


@pytest.mark.parametrize("metrics", [None, ["accuracy"]])
def test_lists_read_by_position_are_the_plain_models(metrics):
    # `loss, accuracy = model.evaluate(x, y)` as for the plain model: the
    # terms are in the dict form and in `fit`'s logs, not in the list.
    x, y, _ = helpers.classification_data(n=30)
    plain = helpers.mlp()
    model = keras_sft.SFTModel(helpers.mlp(), lambda_=0.7)
    for m in (plain, model):
        m.compile(
            optimizer=keras.optimizers.SGD(0.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=metrics,
        )

    expected = plain.evaluate(x, y, verbose=0)
    actual = model.evaluate(x, y, verbose=0)
    # The teacher is the student: the term is zero, the losses equal.
    np.testing.assert_allclose(actual, expected, rtol=1e-6)
    assert np.shape(actual) == np.shape(expected)
    for method in ("train_on_batch", "test_on_batch"):
        np.testing.assert_allclose(
            getattr(model, method)(x, y),
            getattr(plain, method)(x, y),
            rtol=1e-6,
        )
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert {"task_loss", "distill_loss"} <= set(logs)


@pytest.mark.parametrize("use_weights", [False, True])
def test_fit_logs_match_numpy(use_weights):
    x, y, weights = helpers.classification_data(n=30)
    weights = weights if use_weights else None
    model = _sft(lambda_=0.7)
    # A zero learning rate keeps the weights, so every batch of the epoch is
    # evaluated at the same point and the epoch mean has a closed form.
    model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=["accuracy"])
    history = model.fit(
        x, y, sample_weight=weights, batch_size=8, epochs=1, verbose=0
    )
    task, distill = _numpy_terms(model, x, y, weights)
    logs = {k: v[0] for k, v in history.history.items()}
    assert logs["task_loss"] == pytest.approx(task, rel=1e-5)
    assert logs["distill_loss"] == pytest.approx(distill, rel=1e-5)
    assert logs["loss"] == pytest.approx(task + 0.7 * distill, rel=1e-5)
    assert set(logs) == {"loss", "task_loss", "distill_loss", "accuracy"}


def test_student_regularization_is_added_to_the_loss():
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(
        3, kernel_regularizer=keras.regularizers.L2(0.1)
    )(inputs)
    student = keras.Model(inputs, outputs)
    model = keras_sft.SFTModel(student, lambda_=1.0)
    model.compile(optimizer="sgd")
    x, y, _ = helpers.classification_data()
    logs = model.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    penalty = 0.1 * np.sum(student.get_weights()[0] ** 2)
    assert logs["loss"] == pytest.approx(
        logs["task_loss"] + logs["distill_loss"] + penalty, rel=1e-5
    )


def test_evaluate_list_order_is_loss_then_terms_then_metrics():
    model = _sft()
    model.compile(optimizer="sgd", metrics=["accuracy"])
    x, y, _ = helpers.classification_data()
    model.evaluate(x, y, verbose=0)
    assert model.metrics_names[:3] == ["loss", "task_loss", "distill_loss"]


# 4. One SGD step equals a hand-derived numpy step.


@pytest.mark.parametrize("use_weights", [False, True])
def test_one_sgd_step_matches_numpy_gradient(use_weights):
    n, dim, classes, lambda_, lr = 16, 5, 4, 0.8, 0.5
    x, y, weights = helpers.classification_data(n, dim, classes)
    w = weights if use_weights else np.ones(n, "float32")
    inputs = keras.Input((dim,))
    student = keras.Model(inputs, keras.layers.Dense(classes)(inputs))
    model = _sft(student, lambda_=lambda_)
    kernel, bias = (v.copy() for v in student.get_weights())
    t_kernel, t_bias = model.teacher.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(lr))
    model.fit(
        x,
        y,
        sample_weight=weights if use_weights else None,
        batch_size=n,
        epochs=1,
        verbose=0,
    )

    # d/dz of mean_i w_i [CE_i + lambda * mean_k (z_ik - t_ik)^2].
    z = x @ kernel + bias
    t = x @ t_kernel + t_bias
    probs = np.exp(helpers.log_softmax(z))
    onehot = np.eye(classes)[y]
    dz = (probs - onehot + lambda_ * 2.0 * (z - t) / classes) * w[:, None] / n
    np.testing.assert_allclose(
        student.get_weights()[0], kernel - lr * x.T @ dz, atol=1e-6
    )
    np.testing.assert_allclose(
        student.get_weights()[1], bias - lr * dz.sum(0), atol=1e-6
    )


# 5. Under MirroredStrategy the result equals one device.


def _train_one_epoch(strategy, use_weights):
    x, y, weights = helpers.classification_data(n=48)
    with strategy.scope():
        model = _sft(helpers.mlp(), lambda_=1.0)
        model.compile(optimizer=keras.optimizers.SGD(0.2))
    history = model.fit(
        x,
        y,
        sample_weight=weights if use_weights else None,
        batch_size=16,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    return model.student.get_weights(), history.history


@pytest.mark.parametrize("use_weights", [False, True])
def test_mirrored_equals_one_device(use_weights):
    helpers.assert_mirrored_equals_one_device(
        lambda strategy: _train_one_epoch(strategy, use_weights),
        helpers.mlp().get_weights(),
        keys=("loss", "task_loss", "distill_loss"),
    )


# 6. Mixed precision scales the loss.


def _one_step(policy):
    keras.config.set_dtype_policy(policy)
    x, y, _ = helpers.classification_data(n=16)
    model = _sft(helpers.mlp(), lambda_=1.0)
    initial = [w.copy() for w in model.student.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    deltas = [
        a - b for a, b in zip(model.student.get_weights(), initial, strict=True)
    ]
    return model, deltas


def test_mixed_float16_step_matches_float32():
    _, deltas32 = _one_step("float32")
    model, deltas16 = _one_step("mixed_float16")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.student.compute_dtype == "float16"
    # float16 has ~3 significant digits; a missing loss scale would be
    # off by a factor of 2**15.
    helpers.assert_step_matches_float32(deltas16, deltas32)


def test_mixed_bfloat16_trains():
    model, deltas = _one_step("mixed_bfloat16")
    assert model.student.compute_dtype == "bfloat16"
    assert all(np.all(np.isfinite(d)) for d in deltas)
    assert max(np.abs(d).max() for d in deltas) > 1e-3


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_teacher_halves_its_weights_term_in_float32(dtype):
    student = helpers.mlp()
    # Weights in {-0.5, 0, 0.5} and inputs in {-1, 0, 1}: every sum the
    # teacher makes is exact in `dtype`, in any order, so its outputs are
    # the float32 ones; the student's are not, so a difference or square
    # rounded to `dtype` would show.
    teacher = keras.models.clone_model(student)
    teacher.set_weights(
        [np.round(np.clip(w, -0.5, 0.5) * 2) / 2 for w in student.get_weights()]
    )
    rng = np.random.default_rng(0)
    x = rng.integers(-1, 2, size=(32, 6)).astype("float32")
    y = rng.integers(0, 3, size=32).astype("int32")
    teacher_bytes = sum(w.numpy().nbytes for w in teacher.weights)
    model = keras_sft.SFTModel(
        student, teacher=teacher, distance="mse", teacher_dtype=dtype
    )
    assert model.teacher_dtype == dtype
    assert 2 * sum(w.numpy().nbytes for w in teacher.weights) == teacher_bytes
    model.compile(optimizer="sgd")
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    s = helpers.numpy_mlp_logits(model.student.get_weights(), x)
    t = helpers.numpy_mlp_logits(
        [w.astype("float32") for w in teacher.get_weights()], x
    )
    np.testing.assert_allclose(
        logs["distill_loss"], ((s - t) ** 2).mean(), rtol=1e-5
    )


def test_int8_teacher_quantizes_what_it_owns_term_in_float32():
    student = helpers.mlp()
    student.layers[1].trainable = False
    model = keras_sft.SFTModel(student, distance="mse", teacher_dtype="int8")
    assert model.teacher_dtype == "int8"
    # The frozen layer stays the student's variables; the trained head is
    # the teacher's own copy, quantized.
    frozen, head = model.teacher.layers[1:]
    assert frozen.kernel is student.layers[1].kernel
    assert frozen.quantization_mode is None
    assert head.quantization_mode == "int8" and head._kernel.dtype == "int8"
    x, y, _ = helpers.classification_data()
    model.compile(optimizer="sgd")
    model.fit(x, y, epochs=1, verbose=0)
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    s = helpers.numpy_mlp_logits(model.student.get_weights(), x)
    t = np.asarray(model.teacher(x), "float64")
    np.testing.assert_allclose(
        logs["distill_loss"], ((s - t) ** 2).mean(), rtol=1e-5
    )
    float_teacher = helpers.numpy_mlp_logits(
        [frozen.kernel.numpy(), frozen.bias.numpy()]
        + [head._kernel.numpy() / head.kernel_scale.numpy(), head.bias.numpy()],
        x,
    )
    assert np.abs(t - float_teacher).max() > 0


def test_int8_teacher_quantizes_what_the_student_unfreezes(tmp_path):
    student = helpers.mlp()
    pretrained = student.get_weights()
    student.layers[1].trainable = False
    model = keras_sft.SFTModel(student, distance="mse", teacher_dtype="int8")
    x, y, _ = helpers.classification_data()
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, verbose=0)
    student.layers[1].trainable = True
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, verbose=0)
    # The copy the teacher took when the layer was unfrozen is int8, from
    # the pretrained kernel, and the float kernel is gone from its lists.
    layer = model.teacher.layers[1]
    assert layer.quantization_mode == "int8"
    assert [(w.name, w.dtype) for w in layer.weights] == [
        ("bias", "float32"),
        ("kernel", "int8"),
        ("kernel_scale", "float32"),
    ]
    np.testing.assert_allclose(
        layer._kernel.numpy() / layer.kernel_scale.numpy(),
        pretrained[0],
        atol=np.abs(pretrained[0]).max() / 127,
    )
    outputs = np.asarray(model.teacher(x))
    # A model built afresh from a trainable student takes its weights, and
    # so does the saved model loaded back.
    path = str(tmp_path / "sft.weights.h5")
    model.save_weights(path)
    fresh = keras_sft.SFTModel(
        helpers.mlp(seed=3), distance="mse", teacher_dtype="int8"
    )
    fresh.load_weights(path)
    loaded = helpers.keras_round_trip(model, tmp_path, "sft.keras")
    for other in (fresh, loaded):
        np.testing.assert_array_equal(np.asarray(other.teacher(x)), outputs)
        np.testing.assert_array_equal(
            other.predict(x, verbose=0), model.predict(x, verbose=0)
        )
    # A checkpoint holds the int8 kernel where the shared one was.
    checkpoint = tf.train.Checkpoint(model=model)
    saved = checkpoint.save(str(tmp_path / "ckpt"))
    for weight in model.teacher.weights:
        weight.assign(keras.ops.zeros_like(weight))
    checkpoint.restore(saved).assert_existing_objects_matched()
    np.testing.assert_array_equal(np.asarray(model.teacher(x)), outputs)


@pytest.mark.parametrize(
    "dtype, weight_dtypes",
    [("bfloat16", {"bfloat16"}), ("int8", {"int8", "float32"})],
)
def test_lower_precision_teacher_round_trips(tmp_path, dtype, weight_dtypes):
    x, y, _ = helpers.classification_data()
    model = _sft(teacher_dtype=dtype)
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, verbose=0)
    loaded = helpers.keras_round_trip(model, tmp_path, "sft.keras")
    assert loaded.teacher_dtype == dtype
    assert {w.dtype for w in loaded.teacher.weights} == weight_dtypes
    for a, b in zip(
        loaded.teacher.get_weights(), model.teacher.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(a, b)


# 7. Saving and loading.


def test_keras_round_trip(tmp_path):
    x, y, _ = helpers.classification_data()
    model = _sft(lambda_=0.25, distance="kl", temperature=3.0)
    model.compile(optimizer="adam", metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)
    loaded = helpers.keras_round_trip(model, tmp_path, "sft.keras")

    assert isinstance(loaded, keras_sft.SFTModel)
    assert (loaded.lambda_, loaded.distance, loaded.temperature) == (
        0.25,
        "kl",
        3.0,
    )
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    for a, b in zip(
        loaded.teacher.get_weights(), model.teacher.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert not loaded.teacher.trainable
    # The compile configuration came back too: training can resume.
    assert loaded.compiled
    loaded.fit(x, y, epochs=1, verbose=0)


# 8. Bad arguments.


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"lambda_": -1},
            r"Invalid value for argument `lambda_`. Expected a float >= 0. "
            r"Received: lambda_=-1",
        ),
        (
            {"lambda_": "0.5"},
            r"Invalid value for argument `lambda_`. Expected a float >= 0, "
            r"or a schedule of the training step \(a "
            r"`keras.optimizers.schedules.LearningRateSchedule` or a "
            r"callable\). Received: lambda_='0.5'",
        ),
        ({"lambda_": float("nan")}, r"Received: lambda_=nan"),
        ({"lambda_": True}, r"Received: lambda_=True"),
        (
            {"distance": "l1"},
            r"Invalid value for argument `distance`. Expected one of "
            r"\('mse', 'squared_l2', 'kl', 'normalized_mse'\). "
            r"Received: distance='l1'",
        ),
        (
            {"temperature": 0},
            r"Invalid value for argument `temperature`. Expected a float > 0. "
            r"Received: temperature=0",
        ),
        ({"temperature": -2.0}, r"Received: temperature=-2.0"),
        (
            {"teacher_dtype": "int4"},
            r"Invalid value for argument `teacher_dtype`. Expected one of "
            r"\('bfloat16', 'float16', 'int8'\). "
            r"Received: teacher_dtype='int4'",
        ),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_sft.SFTModel(helpers.mlp(), **kwargs)


def test_student_must_be_a_model():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `student`. Expected a "
        r"`keras.Model` instance. Received: student=<Dense",
    ):
        keras_sft.SFTModel(keras.layers.Dense(3))


def test_teacher_must_be_a_model():
    with pytest.raises(
        ValueError, match=r"Invalid value for argument `teacher`. Expected a"
    ):
        keras_sft.SFTModel(helpers.mlp(), teacher="pretrained.keras")


def test_teacher_output_shape_must_match():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `teacher`. Expected a model whose "
        r"outputs have the student's shapes. Received: teacher output shapes "
        r"\[\(None, 5\)\], student output shapes \[\(None, 3\)\]",
    ):
        keras_sft.SFTModel(
            helpers.mlp(classes=3), teacher=helpers.mlp(classes=5)
        )
