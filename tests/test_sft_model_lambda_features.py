"""SFTModel's lambda_ schedules and feature-level consistency."""

import keras
import numpy as np
import pytest

import keras_sft
from tests import helpers


@keras.saving.register_keras_serializable(package="keras_sft_tests")
class _Constant(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, value):
        self.value = value

    def __call__(self, step):
        return keras.ops.full((), self.value)

    def get_config(self):
        return {"value": self.value}


def _one_epoch(lambda_, x, y):
    student = helpers.mlp()
    model = keras_sft.SFTModel(
        student, teacher=helpers.perturbed_copy(student), lambda_=lambda_
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return student.get_weights(), history.history


@pytest.mark.parametrize(
    "schedule", [_Constant(0.3), lambda step: 0.3], ids=["schedule", "callable"]
)
def test_constant_schedule_equals_the_float(schedule):
    x, y, _ = helpers.classification_data(n=32)
    expected, _ = _one_epoch(0.3, x, y)
    weights, history = _one_epoch(schedule, x, y)
    for a, b in zip(weights, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7)
    assert history["lambda"] == [pytest.approx(0.3)]


def test_schedule_is_read_at_each_optimizer_step():
    x, y, _ = helpers.classification_data(n=32)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=[2], values=[0.0, 1.0]
    )
    student = helpers.mlp()
    model = keras_sft.SFTModel(
        student,
        teacher=helpers.perturbed_copy(student),
        lambda_=schedule,
        distance="mse",
    )
    # No update: every step sees the same weights, so each batch's terms
    # have closed forms.
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    s = helpers.numpy_mlp_logits(student.get_weights(), x)
    t = helpers.numpy_mlp_logits(model.teacher.get_weights(), x)
    ce = -helpers.log_softmax(s)[np.arange(len(y)), y]
    d = ((s - t) ** 2).mean(-1)
    lambdas = np.repeat([0.0, 0.0, 0.0, 1.0], 8)  # steps 0..3, batch 8
    assert history.history["loss"][0] == pytest.approx(
        np.mean(ce + lambdas * d), rel=1e-5
    )
    assert history.history["lambda"] == [1.0]  # the value at the last step


def test_schedule_round_trips_through_keras_files(tmp_path):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=[10], values=[0.1, 0.5]
    )
    model = keras_sft.SFTModel(helpers.mlp(), lambda_=schedule)
    model.compile(optimizer="sgd")
    loaded = helpers.keras_round_trip(model, tmp_path)
    assert isinstance(
        loaded.lambda_, keras.optimizers.schedules.PiecewiseConstantDecay
    )
    assert loaded.lambda_.get_config() == schedule.get_config()


def _hidden(weights, x):
    w1, b1, _, _ = weights
    return np.maximum(x @ w1 + b1, 0.0)


@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("with_outputs", [True, False])
def test_feature_distance_matches_numpy(use_weights, with_outputs):
    x, y, weights = helpers.classification_data(n=24)
    weights = weights if use_weights else np.ones(len(y), "float32")
    student = helpers.mlp()
    model = keras_sft.SFTModel(
        student,
        teacher=helpers.perturbed_copy(student),
        lambda_=0.5,
        distance="mse",
        distill_features=["dense"],
        distill_outputs=None if with_outputs else [],
        distill_weights={"dense": 2.0},
    )
    model.compile(optimizer="sgd")
    logs = model.evaluate(
        x, y, sample_weight=weights, batch_size=24, return_dict=True, verbose=0
    )
    s_w, t_w = student.get_weights(), model.teacher.get_weights()
    feature = (
        ((_hidden(s_w, x) - _hidden(t_w, x)) ** 2).mean(-1) * weights
    ).mean()
    output = (
        (
            (
                helpers.numpy_mlp_logits(s_w, x)
                - helpers.numpy_mlp_logits(t_w, x)
            )
            ** 2
        ).mean(-1)
        * weights
    ).mean()
    assert logs["dense_distill_loss"] == pytest.approx(feature, rel=1e-5)
    expected = 2.0 * feature + (output if with_outputs else 0.0)
    assert logs["distill_loss"] == pytest.approx(expected, rel=1e-5)
    assert logs["loss"] == pytest.approx(
        logs["task_loss"] + 0.5 * expected, rel=1e-5
    )


def test_feature_consistency_trains_the_student_only():
    x, y, _ = helpers.classification_data(n=32)
    student = helpers.mlp()
    model = keras_sft.SFTModel(
        student, lambda_=1.0, distill_features=["dense"], distill_outputs=[]
    )
    teacher_before = [w.copy() for w in model.teacher.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(x, y, epochs=2, verbose=0)
    for a, b in zip(model.teacher.get_weights(), teacher_before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(student.get_weights()[0], teacher_before[0])
    # Saving keeps the option, and the student's weights once.
    assert model.get_config()["distill_features"] == ["dense"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"distill_features": ["nope"]},
            r"Invalid value for argument `distill_features`. Expected names "
            r"of layers of the student, a built Functional or Sequential "
            r"model. Received: distill_features=\['nope'\]",
        ),
        (
            {"distill_features": "dense"},
            r"Expected None or a non-empty list of distinct layer names. "
            r"Received: distill_features='dense'",
        ),
        (
            {"distill_features": ["dense"], "distance": "kl"},
            r"Expected distance 'mse' or 'squared_l2': 'kl' compares class "
            r"probabilities, not features",
        ),
        (
            {"distill_features": ["dense"], "distill_weights": {"x": 1.0}},
            r"Expected keys among the distilled outputs and features "
            r"\['dense_1', 'dense'\]",
        ),
    ],
)
def test_bad_feature_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_sft.SFTModel(helpers.mlp(), **kwargs)


def _named_mlp(hidden):
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(hidden, activation="relu", name="features"),
            keras.layers.Dense(3, name="logits"),
        ]
    )


def test_feature_shapes_must_match():
    with pytest.raises(
        ValueError,
        match=r"Expected teacher and student features of the same shape. "
        r"Received: layer 'features' gives \(None, 4\) in the teacher and "
        r"\(None, 8\) in the student",
    ):
        keras_sft.SFTModel(
            _named_mlp(8),
            teacher=_named_mlp(4),
            distill_features=["features"],
        )


def test_cached_outputs_with_features_are_refused():
    x, y, _ = helpers.classification_data(n=16)
    model = keras_sft.SFTModel(helpers.mlp(), distill_features=["dense"])
    model.compile(optimizer="sgd")
    cached = np.zeros((16, 3), "float32")
    with pytest.raises(ValueError, match=r"Cached teacher outputs hold no"):
        model.train_step((x, y, None, cached))
