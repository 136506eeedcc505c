"""`SFTModel.fit` on arrays computes the teacher's outputs once."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers


def _model(cache_teacher, strategy=None, **kwargs):
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        student = helpers.mlp(dropout=0.2)
        model = keras_sft.SFTModel(
            student,
            teacher=helpers.perturbed_copy(student),
            lambda_=kwargs.pop("lambda_", 1.0),
            # The step at this learning rate was chosen for "mse".
            distance="mse",
            cache_teacher=cache_teacher,
            **kwargs,
        )
        # At 0.2 some dropout streams (XLA's, for one) make this model
        # diverge on random labels; at 0.1 every stream trains.
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            metrics=["accuracy"],
        )
    return model


def _fit(model, **kwargs):
    x, y, weights = helpers.classification_data(n=40)
    kwargs.setdefault("sample_weight", weights)
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, **kwargs)
    return model.student.get_weights(), history.history


def _assert_same(cached, live):
    (cached_weights, cached_logs), (live_weights, live_logs) = cached, live
    helpers.assert_same_trained_weights(
        cached_weights, live_weights, helpers.mlp().get_weights()
    )
    assert cached_logs.keys() == live_logs.keys()
    for key, values in live_logs.items():
        np.testing.assert_allclose(cached_logs[key], values, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"sample_weight": None},
        {"validation_split": 0.25},
        {"validation_data": helpers.classification_data(n=12, seed=3)},
        {"validation_data": list(helpers.classification_data(n=12, seed=3))},
        {"sample_weight": None, "class_weight": {0: 2.0, 1: 1.0, 2: 0.5}},
    ],
    ids=[
        "weights",
        "no_weights",
        "validation_split",
        "validation_data",
        "validation_list",
        "class_weight",
    ],
)
def test_cached_fit_equals_live(kwargs, monkeypatch):
    cached_model = _model(cache_teacher=True)
    calls = helpers.count_predicts(cached_model, monkeypatch)
    cached = _fit(cached_model, **kwargs)
    live = _fit(_model(cache_teacher=False), **kwargs)
    _assert_same(cached, live)
    # On one device the first epoch's steps store the outputs: no pass.
    assert calls == []
    # The buffers are freed when `fit` ends.
    assert (
        cached_model._teacher_outputs.first_epoch_cache._filled.numpy().size
        == 0
    )
    if kwargs.get("validation_split") or kwargs.get("validation_data"):
        assert "val_distill_loss" in cached[1]


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_cached_fit_equals_live_with_a_lower_precision_teacher(dtype):
    cached = _fit(_model(cache_teacher=True, teacher_dtype=dtype))
    live = _fit(_model(cache_teacher=False, teacher_dtype=dtype))
    _assert_same(cached, live)


@pytest.mark.slow
def test_cached_fit_equals_live_mirrored(monkeypatch):
    mirrored = helpers.two_cpu_strategy
    cached_model = _model(cache_teacher=True, strategy=mirrored())
    calls = helpers.count_predicts(cached_model, monkeypatch)
    cached = _fit(cached_model)
    _assert_same(cached, _fit(_model(cache_teacher=False, strategy=mirrored())))
    # Replicas cannot scatter into one buffer: one `predict` pass instead.
    assert len(calls) == 1


def test_mirrored_validation_data_gets_its_own_pass(monkeypatch):
    cached_model = _model(
        cache_teacher=True, strategy=helpers.two_cpu_strategy()
    )
    calls = helpers.count_predicts(cached_model, monkeypatch)
    _fit(
        cached_model,
        validation_data=helpers.classification_data(n=12, seed=3),
    )
    # One pass for training, one for array validation data; none per step.
    assert len(calls) == 2


def test_cache_off_outside_its_cases(monkeypatch):
    x, y, _ = helpers.classification_data(n=16)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    cases = [
        (_model(cache_teacher=False), {"x": x, "y": y}),
        (_model(cache_teacher=True), {"x": dataset, "shuffle": False}),
        # On one device the first epoch's cache pays from three epochs.
        (_model(cache_teacher=True), {"x": x, "y": y, "epochs": 2}),
        (_model(cache_teacher=True, lambda_=0.0), {"x": x, "y": y}),
    ]
    # Outputs larger than the inputs (12 logits from 2 features).
    wide = keras_sft.SFTModel(helpers.mlp(input_dim=2, classes=12))
    wide.compile(optimizer="sgd")
    cases.append((wide, {"x": x[:, :2], "y": y}))
    student = helpers.mlp()
    with_features = keras_sft.SFTModel(
        student, distill_features=[student.layers[1].name]
    )
    with_features.compile(optimizer="sgd")
    cases.append((with_features, {"x": x, "y": y}))
    for model, data in cases:
        calls = helpers.count_predicts(model, monkeypatch)
        model.fit(**({"epochs": 3} | data), verbose=0)
        assert calls == []
        assert model._teacher_outputs.first_epoch_cache is None


def test_unequal_lengths_get_keras_own_error():
    x, y, _ = helpers.classification_data(n=16)
    with pytest.raises(ValueError, match="sizes") as error:
        _model(cache_teacher=True).fit(x, y[:15], epochs=2, verbose=0)
    assert "_keras_sft" not in str(error.value)


def test_cache_teacher_round_trips(tmp_path):
    for cache_teacher in (False, True):
        model = keras_sft.SFTModel(helpers.mlp(), cache_teacher=cache_teacher)
        loaded = helpers.keras_round_trip(model, tmp_path)
        assert loaded.cache_teacher is cache_teacher


def test_cache_teacher_must_be_a_bool():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `cache_teacher`. Expected a bool. "
        r"Received: cache_teacher=1",
    ):
        keras_sft.SFTModel(helpers.mlp(), cache_teacher=1)


class _ZeroTeacherAfterFirstEpoch(keras.callbacks.Callback):
    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.teacher.set_weights(
                [np.zeros_like(w) for w in self.teacher.get_weights()]
            )


@pytest.mark.parametrize("cache_teacher", [True, False])
def test_later_epochs_read_the_first_epochs_outputs(cache_teacher):
    model = keras_sft.SFTModel(
        helpers.mlp(), lambda_=1.0, distance="mse", cache_teacher=cache_teacher
    )
    # A zero learning rate keeps the student, so each epoch's distance has
    # a closed form.
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    x, y, _ = helpers.classification_data(n=24)
    teacher_logits = helpers.numpy_mlp_logits(model.teacher.get_weights(), x)
    # After the first epoch the teacher predicts zeros; cached outputs are
    # still the first epoch's (a distance of zero from the unchanged
    # student), the live teacher's are zero.
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        verbose=0,
        callbacks=[_ZeroTeacherAfterFirstEpoch(model.teacher)],
    )
    student_logits = helpers.numpy_mlp_logits(model.student.get_weights(), x)
    np.testing.assert_allclose(teacher_logits, student_logits, rtol=1e-6)
    distances = history.history["distill_loss"]
    assert distances[0] == pytest.approx(0.0, abs=1e-6)
    expected = 0.0 if cache_teacher else (student_logits**2).mean()
    np.testing.assert_allclose(distances[1:], expected, rtol=1e-5, atol=1e-6)


def test_steps_use_the_predicted_outputs_when_mirrored(monkeypatch):
    with helpers.two_cpu_strategy().scope():
        model = keras_sft.SFTModel(helpers.mlp(), lambda_=1.0, distance="mse")
        # A zero learning rate keeps the student, so the epoch's distance
        # has a closed form.
        model.compile(optimizer=keras.optimizers.SGD(0.0))
    # Cached outputs of zero, where the live teacher would give the
    # student's own outputs (a distance of zero).
    monkeypatch.setattr(
        model.teacher,
        "predict",
        lambda x, **kwargs: np.zeros((len(x), 3), "float32"),
    )
    x, y, _ = helpers.classification_data(n=24)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    logits = helpers.numpy_mlp_logits(model.student.get_weights(), x)
    assert history.history["distill_loss"][0] == pytest.approx(
        (logits**2).mean(), rel=1e-5
    )


def test_cache_survives_a_second_fit():
    # The second call reuses the traced train function, and with it the
    # buffers, which it must fill anew.
    model = _model(cache_teacher=True)
    _fit(model)
    again = _fit(model)
    live = _model(cache_teacher=False)
    _fit(live)
    _assert_same(again, _fit(live))


@pytest.mark.parametrize("frozen", [True, False])
def test_no_cache_where_the_step_shares_a_frozen_prefix(frozen):
    # The live step runs the frozen first layer once for both models; the
    # cache's first epoch would run the whole teacher again.
    x, y, _ = helpers.classification_data(n=16)
    student = helpers.mlp()
    student.layers[1].trainable = not frozen
    model = keras_sft.SFTModel(student, lambda_=1.0)
    model.compile(optimizer="sgd")
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert (model._teacher_outputs.shared_prefix() is not None) == frozen
    assert (model._teacher_outputs.first_epoch_cache is None) == frozen


@pytest.mark.parametrize("frozen", [True, False])
def test_no_predict_pass_where_the_step_shares_a_frozen_prefix(
    frozen, monkeypatch
):
    x, y, _ = helpers.classification_data(n=16)
    with helpers.two_cpu_strategy().scope():
        student = helpers.mlp()
        student.layers[1].trainable = not frozen
        model = keras_sft.SFTModel(student, lambda_=1.0)
        model.compile(optimizer="sgd")
    calls = helpers.count_predicts(model, monkeypatch)
    # Two epochs: under a strategy the `predict` pass pays from two.
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert (model._teacher_outputs.shared_prefix() is not None) == frozen
    assert len(calls) == (0 if frozen else 1)


@pytest.mark.slow
def test_cached_fit_equals_live_mirrored_with_an_int8_teacher():
    mirrored = helpers.two_cpu_strategy
    cached_model = _model(True, mirrored(), teacher_dtype="int8")
    # Keras's quantization made the teacher's int8 weights in the
    # strategy's scope, one copy per replica.
    kernel = cached_model.teacher.layers[-1]._kernel
    assert kernel.dtype == "int8"
    assert isinstance(kernel.value, tf.distribute.DistributedValues)
    _assert_same(
        _fit(cached_model),
        _fit(_model(False, mirrored(), teacher_dtype="int8")),
    )
