"""One training step reads as a few calls, each to one module: it runs the
code of at most eight library modules (docs/design.md, "The training
step")."""

import os
import sys
import threading

import keras
import pytest

import keras_sft
from keras_sft import _batch
from keras_sft import _checks
from keras_sft import sft_model
from tests import helpers

_LIBRARY = os.path.dirname(os.path.abspath(keras_sft.__file__))
_STEP = sft_model.SFTModel.train_step.__code__
# Every module whose code runs inside `SFTModel.train_step`, over the
# configurations below.
_STEP_MODULES = {
    "sft_model",
    "_batch",
    "_teacher_outputs",
    "_sft_loss",
    "distances",
    "_step_guard",
    "_keras_compat",
    "data_checks",
}


def _modules_in_train_step(run):
    """The `keras_sft` modules whose code runs inside `train_step` (its
    traces included) while `run()` runs, on any thread."""
    seen = set()

    def profile(frame, event, arg):
        if event != "call":
            return
        caller = frame
        while caller is not None and caller.f_code is not _STEP:
            caller = caller.f_back
        path = frame.f_code.co_filename
        if caller is not None and path.startswith(_LIBRARY + os.sep):
            seen.add(os.path.splitext(os.path.relpath(path, _LIBRARY))[0])

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return seen


def _frozen_first_layer():
    model = helpers.mlp()
    model.layers[1].trainable = False
    return model


def _two_outputs():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(3, name="a")(hidden),
            "b": keras.layers.Dense(2, name="b")(hidden),
        },
    )


def _fit(model, x, y, **kwargs):
    """`model.fit` on `x`, `y` (a function to profile)."""
    return lambda: model.fit(x, y, batch_size=8, verbose=0, **kwargs)


def _case(name):
    """`(model, fit)` of a configuration: a compiled `SFTModel` and a
    function that fits it."""
    x, y, _ = helpers.classification_data(n=16)
    student = _two_outputs() if name == "two_outputs" else helpers.mlp()
    options = {
        "live": {"cache_teacher": False},
        "frozen_prefix": {"cache_teacher": False},
        "features": {"distill_features": [student.layers[1].name]},
        "schedule": {
            "lambda_": keras.optimizers.schedules.ExponentialDecay(0.5, 4, 0.5)
        },
        "unguarded": {"guard_nonfinite": False},
    }.get(name, {})
    if name == "frozen_prefix":
        student.layers[1].trainable = False
    if name == "mirrored":
        # Outputs of one `predict` pass, replicas, the strategy's logs.
        with helpers.two_cpu_strategy().scope():
            model = keras_sft.SFTModel(helpers.mlp())
            model.compile(optimizer="sgd")
        return model, _fit(model, x, y, epochs=2)
    model = keras_sft.SFTModel(student, **options)
    model.compile(optimizer="sgd")
    if name == "two_outputs":
        return model, _fit(model, x, {"a": y, "b": y % 2}, epochs=3)
    if name == "anchors":
        return model, _fit(
            model, x, y, epochs=3, anchor_x=x[:5], anchor_mode="both"
        )
    if name == "cache_teacher_outputs":
        cached = keras_sft.cache_teacher_outputs(model.teacher, (x, y))
        return model, lambda: model.fit(
            cached.batch(8), shuffle=False, verbose=0
        )
    # Three epochs on arrays: the first fills the cache, the others read it.
    return model, _fit(model, x, y, epochs=3 if name == "cached" else 1)


_CASES = [
    "anchors",
    "cache_teacher_outputs",
    "cached",
    "features",
    "frozen_prefix",
    "live",
    # Fifteen seconds in the full suite: the other cases cover the step.
    pytest.param("mirrored", marks=pytest.mark.slow),
    "schedule",
    "two_outputs",
    "unguarded",
]


@pytest.mark.parametrize("name", _CASES)
def test_a_training_step_runs_at_most_eight_modules(name):
    _, fit = _case(name)
    modules = _modules_in_train_step(fit)
    assert len(modules) <= 8, sorted(modules)
    assert modules <= _STEP_MODULES, sorted(modules - _STEP_MODULES)
    # The calls every step makes: unpack, outputs, loss, update.
    assert {"sft_model", "_batch", "_teacher_outputs", "_sft_loss"} <= modules
    assert {"_step_guard", "data_checks"} <= modules


def test_the_step_modules_are_those_named():
    _, fit = _case("frozen_prefix")
    assert _modules_in_train_step(fit) == _STEP_MODULES


def test_a_module_the_step_reaches_is_counted(monkeypatch):
    _, fit = _case("live")
    unpack = _batch.unpack

    def unpack_then_check(data):
        _checks.check_bool("data", True)
        return unpack(data)

    monkeypatch.setattr(_batch, "unpack", unpack_then_check)
    assert "_checks" in _modules_in_train_step(fit)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("live", {}),
        ("cached", {}),
        ("live", {"metrics": ["accuracy"]}),
        ("unguarded", {}),
    ],
)
def test_fit_traces_the_step_once(name, kwargs, monkeypatch):
    """The optimizer and compiled metrics are built before the step is
    traced: a step that created them would be traced twice, and the
    cached epochs read the buffers through the first epoch's graph."""
    model, _ = _case(name)
    model.compile(optimizer="adam", **kwargs)
    traces = []
    train_step = sft_model.SFTModel.train_step

    def counted(self, data):
        traces.append(data)
        return train_step(self, data)

    monkeypatch.setattr(sft_model.SFTModel, "train_step", counted)
    x, y, _ = helpers.classification_data(n=16)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert len(traces) == 1
