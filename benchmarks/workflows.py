"""Ordinary Keras workflows, on a plain model and through `SFTModel`.

Each workflow of the registry runs one thing a Keras user does (fit on
arrays or datasets, callbacks, saving and loading, export, mixed
precision, preprocessing layers, keras-hub tasks, faults) twice from the
same initial weights and seeds: on the plain model with `keras.Model`'s
own methods, and through `keras_sft.SFTModel(student, lambda_=0.0)`,
which SPEC.md makes plain fine-tuning. It compares what Keras defines:
the logs of `fit` and `evaluate`, the trained weights, predictions,
files written and read back, the callbacks' effects and the errors
raised. Where the two may differ by design (`lambda_ > 0`, the library's
own refusals of certainly wrong data, files only `SFTModel` writes), the
workflow checks the behaviour instead (a reload equals what was saved, a
fault raises and leaves the model and its files whole). Workflows marked
`aside` were not in issue 24's list.

One line per workflow: its name, `pass`, `fail` (what differed) or
`error` (the exception that stopped the workflow), and its seconds; then
the counts.

    python -m benchmarks.workflows
    python -m benchmarks.workflows --list
    python -m benchmarks.workflows --workflows=fit_arrays,sequential
"""

import contextlib
import csv
import dataclasses
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from keras import ops  # noqa: E402

import keras_sft  # noqa: E402
from benchmarks import report  # noqa: E402

_WORKFLOWS = flags.DEFINE_list(
    "workflows", [], "Names of the workflows to run; all when empty."
)
_LIST = flags.DEFINE_bool("list", False, "List the workflows and exit.")


@dataclasses.dataclass(frozen=True)
class Workflow:
    """One workflow: `function(check, directory)` records differences
    on `check` and writes its files under `directory`."""

    name: str
    function: object
    aside: bool
    summary: str


WORKFLOWS = {}


def workflow(*, aside=False):
    """Registers the decorated function under its name without the
    leading underscore."""

    def register(function):
        name = function.__name__.lstrip("_")
        summary = (function.__doc__ or "").strip().splitlines()[0]
        WORKFLOWS[name] = Workflow(name, function, aside, summary)
        return function

    return register


class Check:
    """The differences one workflow found, as sentences."""

    def __init__(self):
        self.differences = []

    def that(self, what, condition, detail=""):
        if not condition:
            self.differences.append(f"{what}{': ' + detail if detail else ''}")
        return bool(condition)

    def close(self, what, actual, expected, *, atol=1e-5, rtol=1e-4):
        actual = [np.asarray(a, "float64") for a in keras.tree.flatten(actual)]
        expected = [
            np.asarray(e, "float64") for e in keras.tree.flatten(expected)
        ]
        if len(actual) != len(expected):
            return self.that(
                what, False, f"{len(actual)} arrays against {len(expected)}"
            )
        for a, e in zip(actual, expected, strict=True):
            if a.shape != e.shape:
                return self.that(what, False, f"shape {a.shape} != {e.shape}")
            both_nan = np.isnan(a) & np.isnan(e)
            gap = np.where(both_nan, 0.0, np.abs(a - e))
            bound = atol + rtol * np.abs(np.where(both_nan, 0.0, e))
            if np.isnan(gap).any():
                return self.that(what, False, "NaN against a number")
            if not (gap <= bound).all():
                return self.that(what, False, f"off by up to {gap.max():.3g}")
        return True

    def predictions(self, what, model, expected_model, x, **tolerance):
        return self.close(
            what,
            model.predict(x, verbose=0),
            expected_model.predict(x, verbose=0),
            **tolerance,
        )

    def weights(self, what, model, expected_model, **tolerance):
        return self.close(
            what, model.get_weights(), expected_model.get_weights(), **tolerance
        )

    def history(self, plain, sft, **tolerance):
        """`sft`'s history has each of `plain`'s logs, with the same
        values (`loss` is the total, `task_loss` at `lambda_=0` too)."""
        plain = getattr(plain, "history", plain)
        sft = getattr(sft, "history", sft)
        missing = sorted(set(plain) - set(sft))
        self.that("logs", not missing, f"SFTModel lacks {missing}")
        for key in sorted(set(plain) & set(sft)):
            self.close(f"log {key}", sft[key], plain[key], **tolerance)

    def raises(self, what, function, kinds=(Exception,)):
        """The exception `function()` raises, or `None` (recorded)."""
        try:
            function()
        except kinds as error:
            return error
        self.that(what, False, "nothing raised")
        return None


def run(name, directory=None):
    """Runs one workflow in a fresh Keras session; returns
    `(status, detail, seconds)`."""
    entry = WORKFLOWS[name]
    keras.backend.clear_session()
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    check = Check()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory())
        try:
            entry.function(check, directory)
            status = "fail" if check.differences else "pass"
            detail = "; ".join(check.differences)
        except Exception as error:  # noqa: BLE001 - reported, not hidden
            status = "error"
            message = str(error).strip().splitlines()
            detail = f"{type(error).__name__}: {message[0] if message else ''}"
        finally:
            keras.config.set_dtype_policy("float32")
    return status, detail[:400], time.perf_counter() - start


# Models, data and the two runs.


def _data(n=32, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, rng.integers(0, classes, size=n)


def _mlp(features=6, classes=3, *, dropout=0.0, hidden=8, **dense):
    inputs = keras.Input((features,), name="features")
    h = keras.layers.Dense(hidden, activation="relu", name="hidden", **dense)(
        inputs
    )
    if dropout:
        h = keras.layers.Dropout(dropout)(h)
    outputs = keras.layers.Dense(classes, name="logits")(h)
    return keras.Model(inputs, outputs)


def _mlp_with_hidden(*, trainable):
    """A builder of `_mlp()` whose hidden layer has `trainable`."""

    def build():
        model = _mlp()
        model.get_layer("hidden").trainable = trainable
        return model

    return build


def _cnn(*, frozen_backbone=False):
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    backbone = keras.Model(inputs, h, name="backbone")
    bn = backbone.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))
    backbone.trainable = not frozen_backbone
    inputs = keras.Input((8, 8, 2))
    return keras.Model(inputs, keras.layers.Dense(3)(backbone(inputs)))


def _images(n=24):
    rng = np.random.default_rng(1)
    return (
        rng.normal(size=(n, 8, 8, 2)).astype("float32"),
        rng.integers(0, 3, size=n),
    )


# Reloads and copies must give back the very same numbers.
_EXACT = {"atol": 0, "rtol": 0}


def _twins(build, *, lambda_=0.0, **sft_arguments):
    """A plain model and an `SFTModel` of an equal student."""
    keras.utils.set_random_seed(0)
    plain = build()
    keras.utils.set_random_seed(0)
    student = build()
    student.set_weights(plain.get_weights())
    return plain, keras_sft.SFTModel(student, lambda_=lambda_, **sft_arguments)


def _sgd():
    return keras.optimizers.SGD(0.1, momentum=0.9)


def _scce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _compile(models, *, optimizer=_sgd, loss=_scce, metrics=None, **kwargs):
    for model in models:
        model.compile(
            optimizer=optimizer(),
            loss=loss() if callable(loss) else loss,
            metrics=metrics() if callable(metrics) else metrics,
            **kwargs,
        )


def _compiled_twins(build=_mlp, *, sft=None, **compile_arguments):
    """`_twins(build)`, both compiled alike."""
    plain, model = _twins(build, **(sft or {}))
    _compile([plain, model], **compile_arguments)
    return plain, model


def _fit(models, *args, callbacks=None, interrupted=False, **kwargs):
    """Each model's `fit` history from the same seed; `callbacks(tag)`
    gives each its own callbacks (`tag` is `"plain"` or `"sft"`). With
    `interrupted`, a fit the callbacks stop by `KeyboardInterrupt` (as a
    preemption would) gives `None`."""
    histories = []
    for model, tag in zip(models, ("plain", "sft"), strict=True):
        keras.utils.set_random_seed(1)
        arguments = dict(
            kwargs, verbose=0, shuffle=kwargs.get("shuffle", False)
        )
        if callbacks is not None:
            arguments["callbacks"] = callbacks(tag)
        try:
            histories.append(model.fit(*args, **arguments))
        except KeyboardInterrupt:
            if not interrupted:
                raise
            histories.append(None)
    return histories


def _fit_small(models, **fit):
    """`_fit` on `_data()` in batches of 8."""
    x, y = _data()
    return _fit(models, x, y, batch_size=8, **fit)


def _compare_fit(
    check, build, x, y=None, *, compile_arguments=None, sft=None, **fit
):
    """Fits both from the same weights; compares logs, weights and
    predictions. Returns the two models."""
    plain, model = _compiled_twins(build, sft=sft, **(compile_arguments or {}))
    histories = _fit([plain, model], x, y, **fit)
    check.history(*histories)
    check.weights("trained weights", model.student, plain)
    # Datasets may repeat without end: predict on arrays of the inputs.
    probe = (
        x if isinstance(x, (np.ndarray, list, dict, tf.Tensor)) else _data()[0]
    )
    check.predictions("predictions", model, plain, probe)
    return plain, model


def _compare_small_fit(check, build=_mlp, *, data=None, **fit):
    """`_compare_fit` on `data` (`_data()` by default) in batches of 8
    over two epochs, unless `fit` says otherwise."""
    x, y = _data() if data is None else data
    return _compare_fit(
        check, build, x, y, **{"batch_size": 8, "epochs": 2, **fit}
    )


def _compare_optimizer(check, optimizer, build=_mlp):
    """`_compare_small_fit`, both compiled with `optimizer()`."""
    _compare_small_fit(
        check, build, compile_arguments=dict(optimizer=optimizer)
    )


def _path(directory, name):
    return os.path.join(directory, name)


# Training on arrays, datasets and generators.


@workflow()
def _fit_arrays(check, directory):
    """fit on arrays with Dropout and a partial last batch."""
    x, y = _data()
    _compare_fit(
        check, lambda: _mlp(dropout=0.3), x, y, batch_size=10, epochs=2
    )


@workflow(aside=True)
def _fit_shuffled(check, directory):
    """fit(shuffle=True) from the same seed."""
    _compare_small_fit(check, shuffle=True)


@workflow()
def _fit_twice(check, directory):
    """fit called twice, the second from initial_epoch."""
    plain, model = _compiled_twins()
    _fit_small([plain, model], epochs=1)
    histories = _fit_small([plain, model], epochs=3, initial_epoch=1)
    check.history(*histories)
    check.weights("trained weights", model.student, plain)
    check.that(
        "optimizer iterations",
        int(plain.optimizer.iterations) == int(model.optimizer.iterations),
    )


@workflow()
def _validation_split(check, directory):
    """fit(validation_split=0.25)."""
    _compare_small_fit(check, validation_split=0.25)


@workflow()
def _validation_data(check, directory):
    """fit(validation_data=(x, y))."""
    x, y = _data()
    xv, yv = _data(n=12, seed=3)
    _compare_small_fit(check, data=(x, y), validation_data=(xv, yv))


@workflow(aside=True)
def _validation_freq(check, directory):
    """fit(validation_freq=2) over three epochs."""
    _compare_small_fit(
        check, epochs=3, validation_split=0.25, validation_freq=2
    )


@workflow()
def _dataset_repeat(check, directory):
    """A repeated tf.data dataset with steps_per_epoch and
    validation_steps."""
    x, y = _data()
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    valid = tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8)
    _compare_fit(
        check,
        _mlp,
        train,
        epochs=2,
        steps_per_epoch=3,
        validation_data=valid.repeat(),
        validation_steps=2,
    )


@workflow()
def _dataset_finite(check, directory):
    """A finite tf.data dataset, its last batch partial."""
    x, y = _data(n=30)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    _compare_fit(check, _mlp, train, epochs=2, validation_data=train)


@workflow(aside=True)
def _dataset_sample_weights(check, directory):
    """A dataset of (x, y, sample_weight)."""
    x, y = _data()
    w = np.linspace(0.2, 2.0, len(x)).astype("float32")
    train = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(8)
    _compare_fit(check, _mlp, train, epochs=2)


@workflow(aside=True)
def _py_dataset(check, directory):
    """A keras.utils.PyDataset."""
    x, y = _data()

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()

        def __len__(self):
            return 4

        def __getitem__(self, index):
            return x[index * 8 : index * 8 + 8], y[index * 8 : index * 8 + 8]

    _compare_fit(check, _mlp, Batches(), epochs=2)


@workflow(aside=True)
def _generator(check, directory):
    """A Python generator with steps_per_epoch."""
    x, y = _data()

    def batches():
        while True:
            for start in range(0, len(x), 8):
                yield x[start : start + 8], y[start : start + 8]

    plain, model = _compiled_twins()
    histories = []
    for m in (plain, model):
        keras.utils.set_random_seed(1)
        histories.append(
            m.fit(batches(), epochs=2, steps_per_epoch=4, verbose=0)
        )
    check.history(*histories)
    check.weights("trained weights", model.student, plain)


@workflow()
def _class_weight(check, directory):
    """fit(class_weight=...)."""
    _compare_small_fit(check, class_weight={0: 1.0, 1: 2.5, 2: 0.5})


@workflow()
def _sample_weight(check, directory):
    """fit(sample_weight=array) and evaluate with sample weights."""
    x, y = _data()
    w = np.linspace(0.0, 2.0, len(x)).astype("float32")
    plain, model = _compare_small_fit(check, data=(x, y), sample_weight=w)
    check.close(
        "evaluate(sample_weight)",
        model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)[
            "loss"
        ],
        plain.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)[
            "loss"
        ],
    )


# Losses, metrics and outputs.


@workflow()
def _one_hot_labels(check, directory):
    """categorical_crossentropy on one-hot labels."""
    x, y = _data()
    _compare_small_fit(
        check,
        data=(x, keras.utils.to_categorical(y, 3)),
        compile_arguments=dict(
            loss=lambda: keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=["categorical_accuracy"],
        ),
    )


# `normalized_mse`, the default distance, refuses outputs of one unit.
_ONE_UNIT = {"distance": "mse"}


@workflow(aside=True)
def _one_unit_output_at_defaults(check, directory):
    """SFTModel(student, lambda_=0) at the default distance for a
    one-unit (binary) output: built as for more units."""
    keras.utils.set_random_seed(0)
    model = keras_sft.SFTModel(_binary_mlp("sigmoid")(), lambda_=0.0)
    check.that("built", model.student is not None)


def _binary_mlp(activation):
    def build():
        inputs = keras.Input((6,))
        h = keras.layers.Dense(8, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(1, activation)(h))

    return build


@workflow()
def _binary_probabilities(check, directory):
    """binary_crossentropy on a sigmoid output, accuracy metric."""
    x, y = _data(classes=2)
    _compare_small_fit(
        check,
        _binary_mlp("sigmoid"),
        data=(x, y.astype("float32")[:, None]),
        sft=_ONE_UNIT,
        compile_arguments=dict(
            loss="binary_crossentropy", metrics=["accuracy"]
        ),
    )


@workflow()
def _binary_logits(check, directory):
    """BinaryCrossentropy(from_logits=True), BinaryAccuracy."""
    x, y = _data(classes=2)
    _compare_small_fit(
        check,
        _binary_mlp(None),
        data=(x, y.astype("float32")[:, None]),
        sft=_ONE_UNIT,
        compile_arguments=dict(
            loss=lambda: keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=lambda: [keras.metrics.BinaryAccuracy(threshold=0.0)],
        ),
    )


@workflow(aside=True)
def _softmax_output(check, directory):
    """A softmax output with the string loss
    "sparse_categorical_crossentropy"."""
    x, y = _data()

    def build():
        inputs = keras.Input((6,))
        h = keras.layers.Dense(8, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(3, "softmax")(h))

    _compare_small_fit(
        check,
        build,
        data=(x, y),
        compile_arguments=dict(
            loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        ),
    )


@workflow(aside=True)
def _regression(check, directory):
    """A regression head with mse and mae."""
    x, _ = _data()
    y = x[:, :2].sum(axis=1, keepdims=True)
    _compare_small_fit(
        check,
        lambda: _mlp(classes=1),
        data=(x, y),
        sft=_ONE_UNIT,
        compile_arguments=dict(loss="mse", metrics=["mae"]),
    )


@workflow()
def _metrics(check, directory):
    """Compiled metrics: accuracy, top-2, weighted metrics."""
    x, y = _data()
    w = np.linspace(0.5, 1.5, len(x)).astype("float32")
    _compare_small_fit(
        check,
        data=(x, y),
        sample_weight=w,
        validation_split=0.25,
        compile_arguments=dict(
            metrics=lambda: [
                "accuracy",
                keras.metrics.SparseTopKCategoricalAccuracy(k=2),
            ],
            weighted_metrics=["accuracy"],
        ),
    )


def _two_outputs():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(
        inputs,
        {
            "label": keras.layers.Dense(3, name="label")(h),
            "score": keras.layers.Dense(1, name="score")(h),
        },
    )


@workflow()
def _dict_outputs(check, directory):
    """Dict outputs with per-output losses, loss_weights and metrics."""
    x, y = _data()
    targets = {"label": y, "score": x[:, :1]}
    _compare_small_fit(
        check,
        _two_outputs,
        data=(x, targets),
        validation_split=0.25,
        sft=_ONE_UNIT,
        compile_arguments=dict(
            loss=lambda: {"label": _scce(), "score": "mse"},
            loss_weights={"label": 1.0, "score": 0.5},
            metrics={"label": ["accuracy"], "score": ["mae"]},
        ),
    )


@workflow(aside=True)
def _list_outputs(check, directory):
    """List outputs with a list of losses."""
    x, y = _data()

    def build():
        inputs = keras.Input((6,))
        h = keras.layers.Dense(8, activation="relu")(inputs)
        return keras.Model(
            inputs,
            [
                keras.layers.Dense(3, name="label")(h),
                keras.layers.Dense(1, name="score")(h),
            ],
        )

    _compare_fit(
        check,
        build,
        x,
        [y, x[:, :1]],
        batch_size=8,
        epochs=2,
        sft=_ONE_UNIT,
        compile_arguments=dict(loss=lambda: [_scce(), "mse"]),
    )


# Model kinds.


@workflow()
def _sequential(check, directory):
    """A Sequential model."""
    x, y = _data()

    def build():
        return keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(8, activation="relu"),
                keras.layers.Dense(3),
            ]
        )

    _, model = _compare_small_fit(check, build, data=(x, y))
    _round_trip(check, model, x, directory)


@workflow()
def _multi_input(check, directory):
    """A functional model of two inputs given as a list."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(32, 4)).astype("float32")
    b = rng.normal(size=(32, 3)).astype("float32")
    _, y = _data()

    def build():
        ia, ib = keras.Input((4,)), keras.Input((3,))
        h = keras.layers.Concatenate()([ia, ib])
        h = keras.layers.Dense(8, activation="relu")(h)
        return keras.Model([ia, ib], keras.layers.Dense(3)(h))

    _compare_small_fit(check, build, data=([a, b], y))


@workflow()
def _dict_inputs(check, directory):
    """A functional model of dict inputs."""
    rng = np.random.default_rng(2)
    x = {
        "a": rng.normal(size=(32, 4)).astype("float32"),
        "b": rng.normal(size=(32, 3)).astype("float32"),
    }
    _, y = _data()

    def build():
        inputs = {
            "a": keras.Input((4,), name="a"),
            "b": keras.Input((3,), name="b"),
        }
        h = keras.layers.Concatenate()([inputs["a"], inputs["b"]])
        h = keras.layers.Dense(8, activation="relu")(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    _, model = _compare_small_fit(
        check, build, data=(x, y), validation_split=0.25
    )
    _round_trip(check, model, x, directory)


@keras.saving.register_keras_serializable(package="workflows")
class _Configured(keras.Model):
    def __init__(self, hidden=8, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.classes = hidden, classes
        self.dense = keras.layers.Dense(hidden, activation="relu")
        self.out = keras.layers.Dense(classes)

    def call(self, inputs, training=None):
        return self.out(self.dense(inputs))

    def get_config(self):
        return {
            **super().get_config(),
            "hidden": self.hidden,
            "classes": self.classes,
        }


@keras.saving.register_keras_serializable(package="workflows")
class _Unconfigured(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(3)

    def call(self, inputs, training=None):
        return self.out(self.dense(inputs))


def _built(model_class, **kwargs):
    def build():
        # Keras names a model after its class; `_C` would make `__c`, which
        # TensorFlow refuses as a scope name.
        model = model_class(name=model_class.__name__[1:].lower(), **kwargs)
        model(_data(n=1)[0])
        return model

    return build


@workflow(aside=True)
def _subclassed_built_by_build(check, directory):
    """A subclassed model built by model.build(input_shape), which builds
    none of its layers: fit trains it, as for the plain model."""

    def build():
        model = _Configured(name="configured")
        model.build((None, 6))
        return model

    x, y = _data()
    _compare_small_fit(check, build, data=(x, y))


@workflow()
def _subclassed_with_config(check, directory):
    """A subclassed model with get_config: fit and a .keras round trip."""
    x, y = _data()
    plain, model = _compare_small_fit(
        check, _built(_Configured, hidden=7), data=(x, y)
    )
    _round_trip(check, model, x, directory)


@workflow()
def _subclassed_without_config(check, directory):
    """A subclassed model without get_config: fit, save and load as the
    plain model does."""
    x, y = _data()
    plain, model = _compare_small_fit(check, _built(_Unconfigured), data=(x, y))
    _same_outcome(
        check, "save and load", _reloaded(directory, ".keras", x), plain, model
    )


def _reloaded(directory, suffix, x, **load_arguments):
    """For `_same_outcome`: the predictions on `x` of the model saved as
    `<tag><suffix>` and loaded back."""

    def predictions(model, tag):
        path = _path(directory, tag + suffix)
        model.save(path)
        loaded = keras.models.load_model(path, **load_arguments)
        return loaded.predict(x, verbose=0)

    return predictions


def _same_outcome(check, what, function, plain, model):
    """`function(model, tag)` gives what it gives the plain model, or both
    raise."""
    outcomes = []
    for m, tag in ((plain, "plain"), (model, "sft")):
        try:
            outcomes.append((True, function(m, tag)))
        except Exception as error:  # noqa: BLE001 - compared below
            outcomes.append((False, f"{type(error).__name__}: {error}"[:160]))
    (plain_ok, plain_value), (sft_ok, sft_value) = outcomes
    if plain_ok and sft_ok:
        check.close(what, sft_value, plain_value)
    else:
        check.that(
            what,
            plain_ok == sft_ok,
            f"plain {'ok' if plain_ok else plain_value}, "
            f"SFTModel {'ok' if sft_ok else sft_value}",
        )


@workflow()
def _lambda_layer(check, directory):
    """A Lambda layer of keras.ops: fit, then a .keras round trip with
    safe_mode=False."""
    x, y = _data()

    def build():
        inputs = keras.Input((6,))
        h = keras.layers.Lambda(lambda t: ops.tanh(t) * 2.0)(inputs)
        h = keras.layers.Dense(8, activation="relu")(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    plain, model = _compare_small_fit(check, build, data=(x, y))
    _same_outcome(
        check,
        "save and load(safe_mode=False)",
        _reloaded(directory, ".keras", x, safe_mode=False),
        plain,
        model,
    )


def _sequences(n=32):
    rng = np.random.default_rng(4)
    tokens = rng.integers(1, 10, size=(n, 6))
    lengths = rng.integers(2, 7, size=n)
    tokens[np.arange(6)[None, :] >= lengths[:, None]] = 0
    return tokens, rng.integers(0, 3, size=n)


def _recurrent(layer):
    def build():
        inputs = keras.Input((6,), dtype="int32")
        h = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
        h = layer(4)(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    return build


@workflow()
def _masking_lstm(check, directory):
    """Embedding(mask_zero=True) into an LSTM."""
    x, y = _sequences()
    _, model = _compare_small_fit(
        check, _recurrent(keras.layers.LSTM), data=(x, y)
    )
    _round_trip(check, model, x, directory)


@workflow()
def _masking_gru(check, directory):
    """Embedding(mask_zero=True) into a GRU."""
    x, y = _sequences()
    _compare_small_fit(check, _recurrent(keras.layers.GRU), data=(x, y))


@workflow(aside=True)
def _masking_layer(check, directory):
    """A Masking layer into a SimpleRNN on float sequences."""
    tokens, y = _sequences()
    x = np.repeat(tokens[..., None], 2, axis=-1).astype("float32") / 10.0

    def build():
        inputs = keras.Input((6, 2))
        h = keras.layers.Masking(0.0)(inputs)
        h = keras.layers.SimpleRNN(4)(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    _compare_small_fit(check, build, data=(x, y))


@workflow()
def _batch_norm(check, directory):
    """A CNN with BatchNormalization: weights and moving statistics."""
    x, y = _images()
    _compare_small_fit(check, _cnn, data=(x, y))


@workflow()
def _frozen_backbone(check, directory):
    """A frozen backbone with BatchNorm: only the head trains, the moving
    statistics stay."""
    x, y = _images()
    plain, model = _compare_small_fit(
        check,
        lambda: _cnn(frozen_backbone=True),
        data=(x, y),
    )
    bn = model.student.get_layer("backbone").get_layer("bn")
    check.close(
        "frozen moving mean",
        bn.moving_mean,
        np.linspace(-0.5, 0.5, 4),
        atol=0,
        rtol=1e-7,
    )


@workflow()
def _mobilenet_freeze_unfreeze(check, directory):
    """keras.applications.MobileNetV3Small (32x32, weights=None) with a
    new head: frozen base, then unfrozen and recompiled."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 255, size=(16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, size=16)

    def build():
        base = keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3), include_top=False, weights=None
        )
        base.trainable = False
        inputs = keras.Input((32, 32, 3))
        h = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
        return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))

    plain, model = _compiled_twins(
        build, optimizer=lambda: keras.optimizers.Adam(1e-3)
    )
    histories = _fit([plain, model], x, y, batch_size=8, epochs=1)
    check.history(*histories)
    for m in (plain, model.student):
        m.layers[1].trainable = True
    _compile([plain, model], optimizer=lambda: keras.optimizers.Adam(1e-4))
    histories = _fit([plain, model], x, y, batch_size=8, epochs=1)
    check.history(*histories, atol=1e-4)
    check.weights("trained weights", model.student, plain, atol=1e-4)
    check.close(
        "predictions",
        model.predict(x, verbose=0),
        plain.predict(x, verbose=0),
        atol=1e-4,
    )


@workflow()
def _regularizers(check, directory):
    """Kernel and activity regularizers: the loss includes them."""
    x, y = _data()
    _compare_fit(
        check,
        lambda: _mlp(
            kernel_regularizer=keras.regularizers.L2(0.01),
            activity_regularizer=keras.regularizers.L1(0.001),
        ),
        x,
        y,
        batch_size=8,
        epochs=2,
        validation_split=0.25,
    )


@workflow()
def _freeze_by_position(check, directory):
    """`for layer in model.layers[:-1]: layer.trainable = False`, then
    compile, fit, save and load: the wrapper's `layers` are the model's."""
    x, y = _data()
    plain, model = _twins(_mlp)
    check.that(
        "layers",
        [layer.name for layer in model.layers]
        == [layer.name for layer in plain.layers],
    )
    for m in (plain, model):
        for layer in m.layers[:-1]:
            layer.trainable = False
    _compile([plain, model])
    check.history(*_fit([plain, model], x, y, batch_size=8, epochs=2))
    check.weights("trained weights", model.student, plain)
    loaded = []
    for m, name in ((plain, "plain.keras"), (model, "sft.keras")):
        m.save(os.path.join(directory, name))
        loaded.append(keras.models.load_model(os.path.join(directory, name)))
    check.weights("loaded weights", loaded[1], model)
    check.that(
        "loaded trainability",
        [layer.trainable for layer in loaded[1].layers]
        == [layer.trainable for layer in loaded[0].layers],
    )


@workflow()
def _nan_imputing_model(check, directory):
    """NaN in the inputs of a model that imputes them itself."""
    x, y = _data()
    x[::3, 1] = np.nan

    def build():
        inputs = keras.Input((6,))
        h = keras.layers.Lambda(
            lambda t: ops.where(ops.isnan(t), ops.zeros_like(t), t),
            output_shape=(6,),
        )(inputs)
        h = keras.layers.Dense(8, activation="relu")(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    _compare_small_fit(check, build, data=(x, y))


# Preprocessing layers.


@workflow()
def _normalization(check, directory):
    """An adapted Normalization layer: fit and a .keras round trip."""
    x, y = _data()
    x = x * 5.0 + 3.0

    def build():
        norm = keras.layers.Normalization()
        norm.adapt(x)
        inputs = keras.Input((6,))
        h = keras.layers.Dense(8, activation="relu")(norm(inputs))
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    _, model = _compare_small_fit(check, build, data=(x, y))
    _round_trip(check, model, x, directory)


_COLOURS = ["red", "green", "blue", "cyan", "red", "blue", "pink", "green"]
_WORDS = np.array([[word] for word in _COLOURS] * 4)


@workflow()
def _string_lookup(check, directory):
    """An adapted StringLookup on string inputs: fit and a round trip."""
    y = np.arange(len(_WORDS)) % 3

    def build():
        lookup = keras.layers.StringLookup()
        lookup.adapt(_WORDS[:20])
        inputs = keras.Input((1,), dtype="string")
        h = keras.layers.Embedding(lookup.vocabulary_size(), 4)(lookup(inputs))
        h = keras.layers.Flatten()(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    # Keras's array adapter takes strings as tensors, not NumPy's `<U`.
    words = tf.constant(_WORDS)
    _, model = _compare_small_fit(check, build, data=(words, y))
    _round_trip(check, model, words, directory)


_TEXTS = np.array(
    [
        [text]
        for text in ["the quick fox", "a lazy dog", "the dog jumps"]
        + ["quick quick", "lazy fox jumps high", "a dog", "the end", "fox"]
    ]
    * 4
)


@workflow()
def _text_vectorization(check, directory):
    """An adapted TextVectorization on strings: fit and a round trip."""
    y = np.arange(len(_TEXTS)) % 3

    def build():
        vectorize = keras.layers.TextVectorization(
            max_tokens=16, output_sequence_length=4
        )
        vectorize.adapt(_TEXTS[:, 0])
        inputs = keras.Input((1,), dtype="string")
        h = keras.layers.Embedding(16, 4)(vectorize(inputs))
        h = keras.layers.GlobalAveragePooling1D()(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    texts = tf.constant(_TEXTS)
    _, model = _compare_small_fit(check, build, data=(texts, y))
    _round_trip(check, model, texts, directory)


@workflow(aside=True)
def _integer_lookup_encoding(check, directory):
    """IntegerLookup into CategoryEncoding (multi-hot), adapted."""
    rng = np.random.default_rng(6)
    x = rng.choice([3, 7, 11, 42], size=(32, 3))
    y = rng.integers(0, 3, size=32)

    def build():
        lookup = keras.layers.IntegerLookup(output_mode="multi_hot")
        lookup.adapt(x)
        inputs = keras.Input((3,), dtype="int64")
        h = keras.layers.Dense(8, activation="relu")(lookup(inputs))
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    _, model = _compare_small_fit(check, build, data=(x, y))
    _round_trip(check, model, x, directory)


# Precision and compilation.


def _mixed(policy):
    def mixed(check, directory):
        keras.config.set_dtype_policy(policy)
        x, y = _data()

        def build():
            inputs = keras.Input((6,))
            h = keras.layers.Dense(8, activation="relu")(inputs)
            h = keras.layers.Dense(3)(h)
            outputs = keras.layers.Activation("linear", dtype="float32")(h)
            return keras.Model(inputs, outputs)

        _compare_small_fit(check, build, data=(x, y))

    return mixed


@workflow()
def _mixed_float16(check, directory):
    """The mixed_float16 policy (a LossScaleOptimizer from compile)."""
    _mixed("mixed_float16")(check, directory)


@workflow()
def _mixed_bfloat16(check, directory):
    """The mixed_bfloat16 policy."""
    _mixed("mixed_bfloat16")(check, directory)


@workflow()
def _jit_compile(check, directory):
    """compile(jit_compile=True)."""
    x, y = _data()
    _compare_small_fit(
        check,
        lambda: _mlp(dropout=0.2),
        data=(x, y),
        validation_split=0.25,
        compile_arguments=dict(jit_compile=True),
    )


@workflow()
def _steps_per_execution(check, directory):
    """compile(steps_per_execution=3) with a partial last execution."""
    x, y = _data(n=40)
    _compare_small_fit(
        check,
        data=(x, y),
        validation_split=0.2,
        compile_arguments=dict(steps_per_execution=3),
    )


@workflow(aside=True)
def _run_eagerly(check, directory):
    """compile(run_eagerly=True)."""
    _compare_small_fit(
        check, epochs=1, compile_arguments=dict(run_eagerly=True)
    )


@workflow(aside=True)
def _mirrored_strategy(check, directory):
    """MirroredStrategy over two logical CPUs, built in its scope."""
    if len(tf.config.list_logical_devices("CPU")) < 2:
        raise RuntimeError("needs two logical CPU devices")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        plain, model = _compiled_twins()
    histories = _fit_small([plain, model], epochs=2)
    check.history(*histories)
    check.weights("trained weights", model.student, plain)


# Optimizers.


@workflow()
def _gradient_clipping(check, directory):
    """clipnorm, clipvalue and global_clipnorm."""
    for option in (
        {"clipnorm": 0.1},
        {"clipvalue": 0.01},
        {"global_clipnorm": 0.1},
    ):
        keras.backend.clear_session()
        plain, model = _compiled_twins(
            optimizer=lambda o=option: keras.optimizers.SGD(0.5, **o)
        )
        check.history(*_fit_small([plain, model], epochs=2))
        check.weights(f"weights with {option}", model.student, plain)


@workflow()
def _learning_rate_schedule(check, directory):
    """Adam with a CosineDecay schedule."""
    _compare_optimizer(
        check,
        lambda: keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(0.05, 8)
        ),
    )


@workflow()
def _recompile(check, directory):
    """fit, recompile with another optimizer and loss, fit again."""
    plain, model = _compiled_twins()
    _fit_small([plain, model], epochs=1)
    _compile(
        [plain, model],
        optimizer=lambda: keras.optimizers.Adam(0.01),
        metrics=["accuracy"],
    )
    check.history(*_fit_small([plain, model], epochs=2))
    check.weights("trained weights", model.student, plain)


@workflow(aside=True)
def _adamw_ema(check, directory):
    """AdamW with weight decay and use_ema=True."""
    _compare_optimizer(
        check,
        lambda: keras.optimizers.AdamW(
            0.01,
            weight_decay=0.1,
            use_ema=True,
            ema_momentum=0.5,
            ema_overwrite_frequency=2,
        ),
    )


@workflow(aside=True)
def _gradient_accumulation(check, directory):
    """An optimizer with gradient_accumulation_steps=2."""
    _compare_optimizer(
        check, lambda: keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    )


@workflow(aside=True)
def _explicit_loss_scale(check, directory):
    """A LossScaleOptimizer given to compile under mixed_float16."""
    keras.config.set_dtype_policy("mixed_float16")

    def build():
        inputs = keras.Input((6,))
        h = keras.layers.Dense(8, activation="relu")(inputs)
        outputs = keras.layers.Dense(3, dtype="float32")(h)
        return keras.Model(inputs, outputs)

    _compare_optimizer(
        check,
        lambda: keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=256.0
        ),
        build,
    )


# Callbacks.


def _fit_validated(callback, *, epochs=2):
    """`_fit_small` of twins compiled with accuracy, a quarter held out
    for validation, each with `callback(tag)` (to write its files)."""
    plain, model = _compiled_twins(metrics=["accuracy"])
    _fit_small(
        [plain, model],
        epochs=epochs,
        validation_split=0.25,
        callbacks=lambda tag: [callback(tag)],
    )


@workflow()
def _checkpoint_weights(check, directory):
    """ModelCheckpoint(save_weights_only=True) each epoch, then
    load_weights into fresh models."""
    x, _ = _data()
    plain, model = _compiled_twins()
    _fit_small(
        [plain, model],
        epochs=2,
        callbacks=lambda tag: [
            keras.callbacks.ModelCheckpoint(
                _path(directory, tag + "-{epoch}.weights.h5"),
                save_weights_only=True,
            )
        ],
    )
    fresh_plain, fresh = _twins(lambda: _mlp(hidden=8))
    _load_weights([fresh_plain, fresh], directory, "-1.weights.h5")
    check.predictions("epoch 1 checkpoint", fresh, fresh_plain, x)
    _load_weights([fresh_plain, fresh], directory, "-2.weights.h5")
    check.predictions("epoch 2 checkpoint", fresh, model, x)
    check.weights("teacher after load", fresh.teacher, model.teacher, **_EXACT)


@workflow()
def _checkpoint_keras_best(check, directory):
    """ModelCheckpoint(".keras", save_best_only=True, monitor="val_loss"),
    then keras.models.load_model without custom_objects."""
    x, y = _data()
    _fit_validated(
        lambda tag: keras.callbacks.ModelCheckpoint(
            _path(directory, f"{tag}.keras"),
            save_best_only=True,
            monitor="val_loss",
        ),
        epochs=3,
    )
    loaded_plain = keras.models.load_model(_path(directory, "plain.keras"))
    loaded = keras.models.load_model(_path(directory, "sft.keras"))
    check.that(
        "loaded class",
        isinstance(loaded, keras_sft.SFTModel),
        type(loaded).__name__,
    )
    check.predictions("best checkpoint", loaded, loaded_plain, x)
    check.close(
        "loaded evaluate",
        loaded.evaluate(x, y, verbose=0, return_dict=True)["accuracy"],
        loaded_plain.evaluate(x, y, verbose=0, return_dict=True)["accuracy"],
    )


@workflow(aside=True)
def _checkpoint_into_plain_student(check, directory):
    """An SFTModel's weights checkpoint loaded into the plain student
    architecture: loads right or raises, never loads wrong."""
    x, y = _data()
    _, model = _twins(_mlp)
    _compile([model])
    model.fit(x, y, epochs=1, verbose=0)
    path = _path(directory, "sft.weights.h5")
    model.save_weights(path)
    keras.utils.set_random_seed(7)
    plain = _mlp()
    try:
        plain.load_weights(path)
    except Exception:  # noqa: BLE001 - refusing is right
        return
    check.predictions("loaded student", plain, model, x)


@workflow()
def _early_stopping_restore_best(check, directory):
    """EarlyStopping(restore_best_weights=True) on val_loss."""
    xv, yv = _data(n=16, seed=9)
    plain, model = _compiled_twins(optimizer=lambda: keras.optimizers.SGD(0.5))
    stoppers = {}

    def callbacks(tag):
        stoppers[tag] = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=1, restore_best_weights=True
        )
        return [stoppers[tag]]

    check.history(
        *_fit_small(
            [plain, model],
            epochs=10,
            validation_data=(xv, yv),
            callbacks=callbacks,
        )
    )
    check.that(
        "stopped epoch",
        stoppers["plain"].stopped_epoch == stoppers["sft"].stopped_epoch,
    )
    check.weights("restored weights", model.student, plain)


@workflow()
def _monitors_val_task_loss(check, directory):
    """EarlyStopping, ReduceLROnPlateau and ModelCheckpoint on
    val_task_loss without mode=, against the plain model's on val_loss."""
    xv, yv = _data(n=16, seed=9)
    plain, model = _compiled_twins(optimizer=lambda: keras.optimizers.SGD(0.5))
    made = {}

    def callbacks(tag):
        monitor = "val_loss" if tag == "plain" else "val_task_loss"
        made[tag] = [
            keras.callbacks.EarlyStopping(
                monitor=monitor, patience=2, restore_best_weights=True
            ),
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, patience=1, factor=0.5
            ),
            keras.callbacks.ModelCheckpoint(
                _path(directory, f"{tag}.weights.h5"),
                monitor=monitor,
                save_best_only=True,
                save_weights_only=True,
            ),
        ]
        return made[tag]

    _fit_small(
        [plain, model],
        epochs=8,
        validation_data=(xv, yv),
        callbacks=callbacks,
    )
    for p, s in zip(made["plain"], made["sft"], strict=True):
        check.close(f"{type(p).__name__}.best", s.best, p.best)
    check.that(
        "stopped epoch",
        made["plain"][0].stopped_epoch == made["sft"][0].stopped_epoch,
    )
    check.close(
        "learning rate",
        model.optimizer.learning_rate,
        plain.optimizer.learning_rate,
    )
    check.weights("restored weights", model.student, plain)


@workflow()
def _reduce_lr_on_plateau(check, directory):
    """ReduceLROnPlateau on val_loss and on loss."""
    plain, model = _compiled_twins(optimizer=lambda: keras.optimizers.SGD(0.5))
    check.history(
        *_fit_small(
            [plain, model],
            epochs=5,
            validation_split=0.25,
            callbacks=lambda tag: [
                keras.callbacks.ReduceLROnPlateau(
                    "val_loss", patience=1, factor=0.5
                ),
                keras.callbacks.ReduceLROnPlateau(
                    "loss", patience=1, factor=0.9
                ),
            ],
        )
    )
    check.close(
        "learning rate",
        model.optimizer.learning_rate,
        plain.optimizer.learning_rate,
    )


@workflow(aside=True)
def _learning_rate_scheduler(check, directory):
    """LearningRateScheduler halving the rate each epoch."""
    plain, model = _compiled_twins()
    check.history(
        *_fit_small(
            [plain, model],
            epochs=3,
            callbacks=lambda tag: [
                keras.callbacks.LearningRateScheduler(
                    lambda epoch, rate: rate * 0.5
                )
            ],
        )
    )
    check.weights("trained weights", model.student, plain)


def _scalars(log_dir):
    """TensorBoard scalars by `run/tag`: their values in step order."""
    values = {}
    for root, _, files in os.walk(log_dir):
        run = os.path.relpath(root, log_dir)
        for name in files:
            if "tfevents" not in name:
                continue
            for record in tf.data.TFRecordDataset(os.path.join(root, name)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    plugin = value.metadata.plugin_data.plugin_name
                    if plugin == "scalars":
                        values.setdefault(f"{run}/{value.tag}", []).append(
                            float(tf.make_ndarray(value.tensor))
                        )
                    else:
                        values.setdefault(f"{run}/{value.tag}", [])
    return values


@workflow()
def _tensorboard(check, directory):
    """The TensorBoard callback with histograms: the plain model's
    summaries, with the same values."""
    _fit_validated(
        lambda tag: keras.callbacks.TensorBoard(
            _path(directory, tag), histogram_freq=1
        )
    )
    plain_logs = _scalars(_path(directory, "plain"))
    logs = _scalars(_path(directory, "sft"))
    missing = sorted(set(plain_logs) - set(logs))
    check.that("summaries", not missing, f"SFTModel lacks {missing[:6]}")
    for tag in sorted(set(plain_logs) & set(logs)):
        if plain_logs[tag]:
            check.close(f"summary {tag}", logs[tag], plain_logs[tag])


@workflow()
def _csv_logger(check, directory):
    """CSVLogger: the plain model's columns, with the same values."""
    _fit_validated(
        lambda tag: keras.callbacks.CSVLogger(_path(directory, f"{tag}.csv"))
    )
    rows = {}
    for tag in ("plain", "sft"):
        with open(_path(directory, f"{tag}.csv")) as file:
            rows[tag] = list(csv.DictReader(file))
    missing = sorted(set(rows["plain"][0]) - set(rows["sft"][0]))
    check.that("columns", not missing, f"SFTModel lacks {missing}")
    for column in sorted(set(rows["plain"][0]) & set(rows["sft"][0])):
        check.close(
            f"column {column}",
            [float(r[column]) for r in rows["sft"]],
            [float(r[column]) for r in rows["plain"]],
        )


class _Interrupt(keras.callbacks.Callback):
    """Raises at the end of epoch `epoch`, as a preemption would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("preempted")


def _interrupted_and_resumed(check, directory, backup_class):
    x, y = _data()
    plain, model = _compiled_twins(
        optimizer=lambda: keras.optimizers.Adam(0.01)
    )
    _fit_small(
        [plain, model],
        epochs=4,
        callbacks=lambda tag: [
            backup_class(_path(directory, tag)),
            _Interrupt(1),
        ],
        interrupted=True,
    )
    # A new process: fresh models of the initial weights.
    plain, model = _compiled_twins(
        optimizer=lambda: keras.optimizers.Adam(0.01)
    )
    histories = _fit_small(
        [plain, model],
        epochs=4,
        callbacks=lambda tag: [backup_class(_path(directory, tag))],
    )
    check.history(*histories)
    check.that(
        "resumed epochs",
        len(histories[1].history["loss"]) == len(histories[0].history["loss"]),
        f"{len(histories[1].history['loss'])} epochs after resuming",
    )
    uninterrupted_plain, _ = _twins(_mlp)
    _compile(
        [uninterrupted_plain], optimizer=lambda: keras.optimizers.Adam(0.01)
    )
    keras.utils.set_random_seed(1)
    uninterrupted_plain.fit(
        x, y, batch_size=8, epochs=4, shuffle=False, verbose=0
    )
    check.weights("resumed weights", model.student, plain)
    check.weights(
        "resumed against uninterrupted", model.student, uninterrupted_plain
    )


@workflow()
def _backup_and_restore_keras(check, directory):
    """keras.callbacks.BackupAndRestore: interrupted, then resumed."""
    _interrupted_and_resumed(check, directory, keras.callbacks.BackupAndRestore)


@workflow()
def _backup_and_restore_sft(check, directory):
    """keras_sft.BackupAndRestore: interrupted, then resumed."""
    _interrupted_and_resumed(check, directory, keras_sft.BackupAndRestore)


@workflow(aside=True)
def _batch_logs(check, directory):
    """A LambdaCallback reading each batch's logs; verbose=2 output."""
    plain, model = _compiled_twins(metrics=["accuracy"])
    seen = {"plain": [], "sft": []}
    _fit_small(
        [plain, model],
        epochs=1,
        callbacks=lambda tag: [
            keras.callbacks.LambdaCallback(
                on_train_batch_end=lambda batch, logs: seen[tag].append(
                    (logs["loss"], logs["accuracy"])
                )
            )
        ],
    )
    check.close("batch logs", seen["sft"], seen["plain"])


@workflow(aside=True)
def _stop_training_mid_epoch(check, directory):
    """A callback setting model.stop_training after the second batch."""
    plain, model = _compiled_twins()

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    _fit_small(
        [plain, model],
        epochs=3,
        callbacks=lambda tag: [Stop()],
    )
    check.that(
        "optimizer iterations",
        int(plain.optimizer.iterations) == int(model.optimizer.iterations),
        f"{int(model.optimizer.iterations)} against "
        f"{int(plain.optimizer.iterations)}",
    )
    check.weights("weights", model.student, plain)


@workflow(aside=True)
def _callback_reads_model(check, directory):
    """A callback that reads self.model's weights and learning rate."""
    plain, model = _compiled_twins()
    read = {"plain": [], "sft": []}

    def callbacks(tag):
        def on_epoch_end(epoch, logs):
            m = plain if tag == "plain" else model
            read[tag].append(float(np.abs(m.get_weights()[0]).sum()))
            read[tag].append(float(m.optimizer.learning_rate))

        return [keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)]

    _fit_small([plain, model], epochs=2, callbacks=callbacks)
    check.close("read values", read["sft"], read["plain"])


@workflow(aside=True)
def _terminate_on_nan(check, directory):
    """keras.callbacks.TerminateOnNaN when a batch is NaN: both stop,
    SFTModel's weights stay finite."""
    x, y = _data()
    x[9] = np.nan
    plain, model = _compiled_twins()
    outcomes = {}
    for m, tag in ((plain, "plain"), (model, "sft")):
        try:
            m.fit(
                x,
                y,
                batch_size=8,
                epochs=2,
                shuffle=False,
                verbose=0,
                callbacks=[keras.callbacks.TerminateOnNaN()],
            )
            outcomes[tag] = "stopped"
        except Exception as error:  # noqa: BLE001 - compared below
            outcomes[tag] = type(error).__name__
    check.that(
        "SFTModel's weights finite",
        all(np.isfinite(w).all() for w in model.get_weights()),
    )
    check.that(
        "stops",
        outcomes["sft"] in ("stopped", "NonFiniteLossError"),
        str(outcomes),
    )


# Inference and single batches.


@workflow()
def _evaluate(check, directory):
    """evaluate: list and dict returns, on arrays and a dataset."""
    x, y = _data()
    plain, model = _compiled_twins(metrics=["accuracy"])
    p = plain.evaluate(x, y, batch_size=5, verbose=0, return_dict=True)
    s = model.evaluate(x, y, batch_size=5, verbose=0, return_dict=True)
    missing = sorted(set(p) - set(s))
    check.that("evaluate logs", not missing, f"SFTModel lacks {missing}")
    for key in sorted(set(p) & set(s)):
        check.close(f"evaluate {key}", s[key], p[key])
    # The list, read by position (`loss, accuracy = model.evaluate(...)`).
    check.close(
        "evaluate() list",
        model.evaluate(x, y, verbose=0),
        plain.evaluate(x, y, verbose=0),
    )
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    check.close(
        "evaluate(dataset)",
        model.evaluate(dataset, verbose=0),
        plain.evaluate(dataset, verbose=0),
    )


@workflow()
def _predict(check, directory):
    """predict on arrays with batch_size, on a dataset, and __call__."""
    x, _ = _data()
    plain, model = _twins(_mlp)
    check.close(
        "predict(batch_size=5)",
        model.predict(x, batch_size=5, verbose=0),
        plain.predict(x, batch_size=5, verbose=0),
    )
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(7)
    check.predictions("predict(dataset)", model, plain, dataset)
    check.close("__call__", model(x, training=False), plain(x, training=False))


@workflow()
def _on_batch(check, directory):
    """train_on_batch, test_on_batch and predict_on_batch."""
    x, y = _data()
    plain, model = _compiled_twins(metrics=["accuracy"])
    for start in (0, 8):
        batch = (x[start : start + 8], y[start : start + 8])
        p = plain.train_on_batch(*batch, return_dict=True)
        s = model.train_on_batch(*batch, return_dict=True)
        check.that("train_on_batch logs", set(p) <= set(s), str(sorted(s)))
        check.close("train_on_batch loss", s["loss"], p["loss"])
    check.weights("weights after train_on_batch", model.student, plain)
    p = plain.test_on_batch(x[:8], y[:8], return_dict=True)
    s = model.test_on_batch(x[:8], y[:8], return_dict=True)
    check.close("test_on_batch loss", s["loss"], p["loss"])
    check.close("test_on_batch accuracy", s["accuracy"], p["accuracy"])
    check.close(
        "predict_on_batch",
        model.predict_on_batch(x[:8]),
        plain.predict_on_batch(x[:8]),
    )
    check.close(
        "train_on_batch list",
        model.train_on_batch(x[:8], y[:8]),
        plain.train_on_batch(x[:8], y[:8]),
    )
    check.close(
        "test_on_batch list",
        model.test_on_batch(x[:8], y[:8]),
        plain.test_on_batch(x[:8], y[:8]),
    )


@workflow()
def _summary(check, directory):
    """model.summary prints, and counts the student's parameters."""
    plain, model = _twins(_mlp)
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    check.that("summary printed", bool(lines))
    check.that(
        "student's parameter count in the summary",
        any(f"{plain.count_params():,}" in line for line in lines),
    )


@workflow()
def _model_graph(check, directory):
    """What a Functional model answers about its graph: get_layer (by
    name and index), inputs and outputs, their shapes, and a feature
    extractor built from them, trained."""
    x, _ = _data()
    plain, model = _compiled_twins()
    _fit_small([plain, model], epochs=1)
    for what, answer in (
        ("get_layer", lambda m: m.get_layer("hidden").name),
        ("get_layer(index=)", lambda m: m.get_layer(index=2).name),
        ("inputs", lambda m: [(t.name, t.shape) for t in m.inputs]),
        ("outputs", lambda m: [t.shape for t in m.outputs]),
        ("input and output", lambda m: (m.input.shape, m.output.shape)),
        ("shapes", lambda m: (m.input_shape, m.output_shape)),
        ("compute_output_shape", lambda m: m.compute_output_shape((5, 6))),
    ):
        expected, actual = answer(plain), answer(model)
        check.that(what, actual == expected, f"{actual} != {expected}")
    _same_outcome(
        check,
        "feature extractor",
        lambda m, tag: (
            keras.Model(m.inputs, m.get_layer("hidden").output)
            .predict(x, verbose=0)
            .round(5)
            .tolist()
        ),
        plain,
        model,
    )


@workflow()
def _clone_model(check, directory):
    """keras.models.clone_model of the SFTModel: same kind of model, as
    clone_model gives of a plain one."""
    x, _ = _data()
    plain, model = _twins(_mlp)
    _same_outcome(
        check,
        "clone_model output shape",
        lambda m, tag: keras.models.clone_model(m).predict(x, verbose=0).shape,
        plain,
        model,
    )
    clone = keras.models.clone_model(model)
    check.that("clone class", type(clone) is type(model), type(clone).__name__)
    check.that("clone lambda_", getattr(clone, "lambda_", None) == 0.0)


# Files.


def _round_trip(check, model, x, directory, *, name="round_trip.keras"):
    """A .keras save and load_model without custom_objects gives back the
    same predictions, teacher and lambda_."""
    path = _path(directory, name)
    model.save(path)
    loaded = keras.models.load_model(path)
    check.that(
        ".keras class",
        isinstance(loaded, keras_sft.SFTModel),
        type(loaded).__name__,
    )
    check.predictions(".keras predictions", loaded, model, x, **_EXACT)
    check.predictions(
        ".keras teacher", loaded.teacher, model.teacher, x, **_EXACT
    )
    check.that(".keras lambda_", loaded.lambda_ == model.lambda_)
    return loaded


@workflow()
def _keras_round_trip_resume(check, directory):
    """.keras save after fit, load_model, then fit on: as the plain model
    (the optimizer state travels)."""
    x, _ = _data()
    plain, model = _compiled_twins(
        optimizer=lambda: keras.optimizers.Adam(0.01), metrics=["accuracy"]
    )
    _fit_small([plain, model], epochs=1)
    plain.save(_path(directory, "plain.keras"))
    loaded = _round_trip(check, model, x, directory, name="sft.keras")
    loaded_plain = keras.models.load_model(_path(directory, "plain.keras"))
    check.history(*_fit_small([loaded_plain, loaded], epochs=1))
    check.weights("weights after resuming", loaded.student, loaded_plain)


@workflow()
def _keras_round_trip_lambda(check, directory):
    """.keras round trip of an SFTModel with lambda_=0.5 and a teacher
    apart from the student."""
    x, y = _data()
    keras.utils.set_random_seed(0)
    student = _mlp()
    teacher = keras.models.clone_model(student)
    model = keras_sft.SFTModel(student, teacher, lambda_=0.5)
    _compile([model])
    model.fit(x, y, epochs=1, verbose=0)
    loaded = _round_trip(check, model, x, directory)
    check.close(
        "loaded evaluate",
        loaded.evaluate(x, y, verbose=0),
        model.evaluate(x, y, verbose=0),
    )


@workflow()
def _save_load_weights(check, directory):
    """save_weights then load_weights into a fresh model."""
    x, _ = _data()
    plain, model = _compiled_twins()
    _fit_small([plain, model], epochs=1)
    model.save_weights(_path(directory, "sft.weights.h5"))
    keras.utils.set_random_seed(3)
    fresh = keras_sft.SFTModel(_mlp(), lambda_=0.0)
    fresh.load_weights(_path(directory, "sft.weights.h5"))
    check.predictions("reloaded predictions", fresh, model, x, **_EXACT)
    check.weights("reloaded teacher", fresh.teacher, model.teacher, **_EXACT)


def _fit_across_trainable_change(check, build, *, then, recompile):
    """Fits twins of `build` an epoch, sets the hidden layer's trainable
    to `then`, recompiles or not, fits an epoch more and compares."""
    plain, model = _compiled_twins(build)
    _fit_small([plain, model], epochs=1)
    for m in (plain, model):
        m.get_layer("hidden").trainable = then
    if recompile:
        _compile([plain, model])
    check.history(*_fit_small([plain, model], epochs=1))
    check.weights("trained weights", model.student, plain)
    return plain, model


def _load_weights(models, directory, suffix):
    """Loads `plain<suffix>` and `sft<suffix>` into the two models."""
    for model, tag in zip(models, ("plain", "sft"), strict=True):
        model.load_weights(_path(directory, tag + suffix))


def _trainable_change_then_reload(check, directory, *, first, then):
    """Trains with the first layer's trainable `first`, sets it to `then`,
    trains on, saves weights and loads them into a fresh model made with
    `first`."""
    x, _ = _data()
    build = _mlp_with_hidden(trainable=first)
    plain, model = _fit_across_trainable_change(
        check, build, then=then, recompile=True
    )
    plain.save_weights(_path(directory, "plain.weights.h5"))
    model.save_weights(_path(directory, "sft.weights.h5"))
    fresh_plain, fresh = _twins(build)
    keras.utils.set_random_seed(5)
    _load_weights([fresh_plain, fresh], directory, ".weights.h5")
    check.predictions("reloaded predictions", fresh, fresh_plain, x)
    check.predictions(
        "reloaded teacher", fresh.teacher, model.teacher, x, **_EXACT
    )


@workflow()
def _unfreeze_then_reload(check, directory):
    """Frozen layer unfrozen between fits; save_weights; load_weights into
    a fresh frozen model."""
    _trainable_change_then_reload(check, directory, first=False, then=True)


@workflow()
def _freeze_then_reload(check, directory):
    """Trained layer frozen between fits; save_weights; load_weights into
    a fresh trainable model."""
    _trainable_change_then_reload(check, directory, first=True, then=False)


@workflow(aside=True)
def _tf_checkpoint_after_unfreezing(check, directory):
    """tf.train.Checkpoint saved after a frozen layer was unfrozen and
    trained; restored into fresh frozen models."""
    x, _ = _data()
    build = _mlp_with_hidden(trainable=False)
    plain, model = _fit_across_trainable_change(
        check, build, then=True, recompile=True
    )
    paths = [
        tf.train.Checkpoint(model=m).save(_path(directory, tag))
        for m, tag in ((plain, "plain"), (model, "sft"))
    ]
    fresh_plain, fresh = _twins(build)
    for m, path in zip((fresh_plain, fresh), paths, strict=True):
        status = tf.train.Checkpoint(model=m).restore(path)
        status.assert_existing_objects_matched()
    check.predictions("restored predictions", fresh, fresh_plain, x)
    check.predictions(
        "restored teacher", fresh.teacher, model.teacher, x, **_EXACT
    )


@workflow(aside=True)
def _unfreeze_without_recompile(check, directory):
    """A layer unfrozen after compile, fit again without recompiling."""
    _fit_across_trainable_change(
        check, _mlp_with_hidden(trainable=False), then=True, recompile=False
    )


@workflow()
def _get_set_weights(check, directory):
    """get_weights/set_weights across models: SFTModel to SFTModel,
    student to plain, plain to student."""
    x, _ = _data()
    plain, model = _compiled_twins()
    _fit_small([plain, model], epochs=1)
    keras.utils.set_random_seed(4)
    other = keras_sft.SFTModel(_mlp(), lambda_=0.0)
    other.set_weights(model.get_weights())
    check.predictions("SFTModel to SFTModel", other, model, x, **_EXACT)
    check.weights("teacher copied", other.teacher, model.teacher, **_EXACT)
    keras.utils.set_random_seed(4)
    target = _mlp()
    target.set_weights(model.student.get_weights())
    check.predictions("student to plain", target, model, x, **_EXACT)
    teacher_before = model.teacher.predict(x, verbose=0)
    keras.utils.set_random_seed(4)
    source = _mlp()
    model.student.set_weights(source.get_weights())
    check.predictions("plain to student", model, source, x, **_EXACT)
    check.close(
        "teacher kept",
        model.teacher.predict(x, verbose=0),
        teacher_before,
        **_EXACT,
    )


@workflow(aside=True)
def _student_set_weights_with_frozen_layer(check, directory):
    """student.set_weights on a student with a frozen layer: the teacher
    keeps its weights, as a teacher apart from the student does."""
    x, _ = _data()
    build = _mlp_with_hidden(trainable=False)
    keras.utils.set_random_seed(0)
    model = keras_sft.SFTModel(build(), lambda_=0.0)
    before = model.teacher.predict(x, verbose=0)
    keras.utils.set_random_seed(8)
    model.student.set_weights(build().get_weights())
    check.close(
        "teacher outputs", model.teacher.predict(x, verbose=0), before, **_EXACT
    )


@workflow(aside=True)
def _student_load_weights_with_frozen_layer(check, directory):
    """student.load_weights on a student with a frozen layer: the teacher
    keeps its weights."""
    x, _ = _data()
    build = _mlp_with_hidden(trainable=False)
    keras.utils.set_random_seed(8)
    other = build()
    other.save_weights(_path(directory, "other.weights.h5"))
    keras.utils.set_random_seed(0)
    model = keras_sft.SFTModel(build(), lambda_=0.0)
    before = model.teacher.predict(x, verbose=0)
    model.student.load_weights(_path(directory, "other.weights.h5"))
    check.predictions("student loaded", model, other, x, **_EXACT)
    check.close(
        "teacher outputs", model.teacher.predict(x, verbose=0), before, **_EXACT
    )


@workflow()
def _export(check, directory):
    """model.export and keras_sft.export_saved_model: the served outputs
    are the plain model's predictions."""
    x, _ = _data()
    plain, model = _compiled_twins()
    _fit_small([plain, model], epochs=1)
    plain.export(_path(directory, "plain"), verbose=False)
    model.export(_path(directory, "sft"), verbose=False)
    expected = plain.predict(x, verbose=0)
    exported = tf.saved_model.load(_path(directory, "sft"))
    served = exported.serve(x)
    check.close("model.export", served, expected)
    keras_sft.export_saved_model(model, _path(directory, "sft_export"))
    loaded = tf.saved_model.load(_path(directory, "sft_export"))
    signature = loaded.signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    outputs = signature(**{name: tf.constant(x)})
    check.close("export_saved_model", list(outputs.values()), [expected])


@workflow(aside=True)
def _json_config_round_trip(check, directory):
    """to_json / model_from_json and get_config / from_config."""
    x, _ = _data()
    plain, model = _twins(_mlp)
    _same_outcome(
        check,
        "model_from_json output shape",
        lambda m, tag: (
            keras.models.model_from_json(m.to_json())
            .predict(x, verbose=0)
            .shape
        ),
        plain,
        model,
    )
    rebuilt = keras_sft.SFTModel.from_config(model.get_config())
    check.that("from_config lambda_", rebuilt.lambda_ == model.lambda_)


@workflow(aside=True)
def _legacy_h5(check, directory):
    """model.save("x.h5") (legacy HDF5), then load_model: as the plain
    model does."""
    x, _ = _data()
    plain, model = _twins(_mlp)
    _same_outcome(
        check, "legacy .h5", _reloaded(directory, ".h5", x), plain, model
    )


# keras-hub.


def _bert_classifier():
    from benchmarks import _hub_tasks

    words = ["the", "quick", "fox", "a", "lazy", "dog", "jumps", "end"]
    return _hub_tasks.bert_text_classifier(words, sequence_length=8)


@workflow()
def _keras_hub_text_classifier(check, directory):
    """A tiny keras-hub BertTextClassifier built from its config: fit on
    strings, save_to_preset and from_preset, and a .keras round trip."""
    import keras_hub

    texts = _TEXTS[:16, 0]
    y = np.arange(16) % 3
    plain, model = _twins(_bert_classifier)
    # The task compiled itself when made; `compile(metrics=None)` on it
    # still logs its accuracy, so both get the metric named.
    _compile(
        [plain, model],
        optimizer=lambda: keras.optimizers.Adam(1e-3),
        metrics=lambda: [keras.metrics.SparseCategoricalAccuracy()],
    )
    check.history(*_fit([plain, model], texts, y, batch_size=8, epochs=1))
    check.weights("trained weights", model.student, plain)
    expected = plain.predict(texts, verbose=0)
    check.close("predictions", model.predict(texts, verbose=0), expected)
    model.student.save_to_preset(_path(directory, "preset"))
    loaded = keras_hub.models.TextClassifier.from_preset(
        _path(directory, "preset")
    )
    check.predictions("from_preset predictions", loaded, model, texts, **_EXACT)
    _round_trip(check, model, texts, directory)


@workflow(aside=True)
def _keras_hub_causal_lm(check, directory):
    """A tiny keras-hub GPT2CausalLM from its config: fit on strings."""

    def build():
        from benchmarks import _hub_tasks

        return _hub_tasks.gpt2_causal_lm(num_layers=1)

    texts = np.array(["a b ab", "b a", "ab ab a", "a a b b"] * 4)
    plain, model = _compiled_twins(
        build,
        optimizer=lambda: keras.optimizers.Adam(1e-3),
        loss=_scce,
        weighted_metrics=[],
    )
    check.history(*_fit([plain, model], texts, batch_size=8, epochs=1))
    check.weights("trained weights", model.student, plain)


# Faults.


def _refused_without_harm(
    check, what, x, y, *, sample_weight=None, valid_steps=None
):
    """`fit` on faulty data: SFTModel raises where the plain model raises
    or trains silently, and keeps its weights (or those of the plain
    model trained on `valid_steps`, the batches before the faulty one)."""
    plain, model = _compiled_twins()
    before = model.get_weights()
    if valid_steps is not None:
        trained, _ = _twins(_mlp)
        _compile([trained])
        trained.fit(valid_steps, epochs=1, verbose=0)
        before = trained.get_weights() + model.get_weights()[4:]
    plain_outcome = "trained silently"
    try:
        plain.fit(x, y, sample_weight=sample_weight, epochs=1, verbose=0)
    except Exception as error:  # noqa: BLE001 - reported
        plain_outcome = type(error).__name__
    error = check.raises(
        f"{what} (plain: {plain_outcome})",
        lambda: model.fit(
            x, y, sample_weight=sample_weight, epochs=1, verbose=0
        ),
    )
    if error is not None:
        exact = valid_steps is None
        check.close(
            f"{what}: weights kept",
            model.get_weights(),
            before,
            atol=0 if exact else 1e-5,
            rtol=0 if exact else 1e-4,
        )


@workflow()
def _bad_labels_out_of_range(check, directory):
    """Labels past the number of classes."""
    x, y = _data()
    y[5] = 7
    _refused_without_harm(check, "out-of-range label", x, y)


@workflow()
def _bad_labels_fractional(check, directory):
    """Fractional labels for a sparse loss."""
    x, y = _data()
    _refused_without_harm(check, "fractional labels", x, y + 0.5)


@workflow()
def _bad_labels_nan(check, directory):
    """A NaN label."""
    x, y = _data()
    y = y.astype("float32")
    y[3] = np.nan
    _refused_without_harm(check, "NaN label", x, y)


@workflow(aside=True)
def _bad_labels_in_dataset(check, directory):
    """An out-of-range label in a dataset's third batch."""
    x, y = _data()
    y[20] = 9
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    _refused_without_harm(
        check,
        "out-of-range label in a dataset",
        dataset,
        None,
        valid_steps=dataset.take(2),
    )


@workflow(aside=True)
def _negative_sample_weight(check, directory):
    """A negative sample weight."""
    x, y = _data()
    w = np.ones(len(x), "float32")
    w[4] = -1.0
    _refused_without_harm(
        check, "negative sample weight", x, y, sample_weight=w
    )


@workflow(aside=True)
def _mismatched_lengths(check, directory):
    """x and y of different lengths: both raise."""
    x, y = _data()
    _refused_without_harm(check, "mismatched lengths", x, y[:-3])


@workflow(aside=True)
def _nan_inputs_without_imputation(check, directory):
    """NaN inputs into a model that does not impute: SFTModel stops
    instead of training NaN weights."""
    x, y = _data()
    x[10, 0] = np.nan
    _refused_without_harm(check, "NaN input", x, y)


@workflow()
def _full_disk(check, directory):
    """A full disk (shutil.disk_usage says little space): save and
    save_weights raise OSError, the previous files stay whole, no
    temporary file is left."""
    x, y = _data()
    _, model = _twins(_mlp)
    _compile([model])
    keras_path = _path(directory, "model.keras")
    weights_path = _path(directory, "model.weights.h5")
    model.save(keras_path)
    model.save_weights(weights_path)
    sizes = (os.path.getsize(keras_path), os.path.getsize(weights_path))
    model.fit(x, y, epochs=1, verbose=0)
    real = shutil.disk_usage

    def little_space(path):
        return real(path)._replace(free=100)

    shutil.disk_usage = little_space
    try:
        check.raises(
            "save on a full disk", lambda: model.save(keras_path), OSError
        )
        check.raises(
            "save_weights on a full disk",
            lambda: model.save_weights(weights_path),
            OSError,
        )
    finally:
        shutil.disk_usage = real
    check.that(
        "files kept",
        sizes == (os.path.getsize(keras_path), os.path.getsize(weights_path)),
    )
    check.that(
        "no temporary file",
        sorted(os.listdir(directory)) == ["model.keras", "model.weights.h5"],
        str(sorted(os.listdir(directory))),
    )
    keras.models.load_model(keras_path, compile=False)


def _load_weights_raises(check, models, directory):
    """`load_weights` of `<tag>.weights.h5` raises for both models;
    returns SFTModel's error."""
    errors = []
    for m, tag in zip(models, ("plain", "sft"), strict=True):
        path = _path(directory, f"{tag}.weights.h5")
        what = "load_weights" if tag == "sft" else "plain load_weights"
        errors.append(
            check.raises(what, lambda m=m, path=path: m.load_weights(path))
        )
    return errors[-1]


def _names_file(check, error, name):
    check.that(
        "message names the file",
        error is None or name in str(error),
        str(error),
    )


def _truncate(path):
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)


@workflow()
def _truncated_weights(check, directory):
    """A truncated .weights.h5 file: load_weights raises, as for the
    plain model, and the model keeps its weights."""
    plain, model = _twins(_mlp)
    for m, tag in ((plain, "plain"), (model, "sft")):
        m.save_weights(_path(directory, f"{tag}.weights.h5"))
        _truncate(_path(directory, f"{tag}.weights.h5"))
    before = model.get_weights()
    error = _load_weights_raises(check, [plain, model], directory)
    _names_file(check, error, "sft.weights.h5")
    check.close("weights kept", model.get_weights(), before, **_EXACT)


@workflow()
def _truncated_keras_file(check, directory):
    """A truncated .keras file: load_model raises for both."""
    plain, model = _twins(_mlp)
    for m, tag in ((plain, "plain"), (model, "sft")):
        m.save(_path(directory, f"{tag}.keras"))
        _truncate(_path(directory, f"{tag}.keras"))
    check.raises(
        "plain load_model",
        lambda: keras.models.load_model(_path(directory, "plain.keras")),
    )
    check.raises(
        "load_model",
        lambda: keras.models.load_model(_path(directory, "sft.keras")),
    )


@workflow(aside=True)
def _empty_weights_file(check, directory):
    """An empty .weights.h5 file: load_weights raises."""
    _, model = _twins(_mlp)
    open(_path(directory, "empty.weights.h5"), "wb").close()
    error = check.raises(
        "load_weights",
        lambda: model.load_weights(_path(directory, "empty.weights.h5")),
    )
    _names_file(check, error, "empty.weights.h5")


@workflow(aside=True)
def _weights_of_another_architecture(check, directory):
    """load_weights of a model with other shapes: raises, as for the
    plain model."""
    other_plain, other = _twins(lambda: _mlp(hidden=5))
    other_plain.save_weights(_path(directory, "plain.weights.h5"))
    other.save_weights(_path(directory, "sft.weights.h5"))
    plain, model = _twins(_mlp)
    before = model.get_weights()
    _load_weights_raises(check, [plain, model], directory)
    check.close("weights kept", model.get_weights(), before, **_EXACT)


@workflow(aside=True)
def _interrupt_then_fit_again(check, directory):
    """Ctrl-C in the middle of fit, then fit again: as the plain model."""
    plain, model = _compiled_twins()

    class CtrlC(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise KeyboardInterrupt

    _fit_small(
        [plain, model],
        epochs=2,
        callbacks=lambda tag: [CtrlC()],
        interrupted=True,
    )
    check.weights("interrupted weights", model.student, plain)
    check.history(*_fit_small([plain, model], epochs=1))
    check.weights("weights after fitting again", model.student, plain)


@workflow(aside=True)
def _whole_model_frozen(check, directory):
    """model.trainable = False before compile: fit trains nothing, as for
    the plain model."""
    plain, model = _twins(_mlp)
    plain.trainable = False
    model.trainable = False
    _compile([plain, model])
    before = plain.get_weights()
    check.history(*_fit_small([plain, model], epochs=1))
    check.close(
        "weights unchanged", model.student.get_weights(), before, **_EXACT
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    names = _WORKFLOWS.value or list(WORKFLOWS)
    unknown = sorted(set(names) - set(WORKFLOWS))
    if unknown:
        raise app.UsageError(
            f"Invalid value for flag `workflows`. Expected names from "
            f"--list. Received: workflows={unknown}"
        )
    if _LIST.value:
        for name in names:
            entry = WORKFLOWS[name]
            aside = " (aside)" if entry.aside else ""
            print(f"{name}{aside}: {entry.summary}")
        return
    # MirroredStrategy's workflow splits the CPU in two logical devices,
    # which must happen before TensorFlow initialises them.
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
    print(report.machine(), flush=True)
    start = time.perf_counter()
    counts = {"pass": 0, "fail": 0, "error": 0}
    print(
        "| workflow | result | s | what differed |\n| --- | --- | --- | --- |"
    )
    for name in names:
        status, detail, seconds = run(name)
        counts[status] += 1
        aside = " (aside)" if WORKFLOWS[name].aside else ""
        print(
            f"| {name}{aside} | {status} | {seconds:.1f} | {detail} |",
            flush=True,
        )
    print(
        f"{len(names)} workflows: {counts['pass']} pass, {counts['fail']} "
        f"fail, {counts['error']} error in "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    app.run(main)
