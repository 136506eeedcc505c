"""Tiny models and data shared by the tests."""

import gc
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

# The repository's root, where `python -m` finds the binaries.
_ROOT = pathlib.Path(__file__).parent.parent


def mlp(
    input_dim=6,
    hidden=8,
    classes=3,
    seed=0,
    dropout=None,
    name="mlp",
    activation="relu",
):
    """A small built Functional classifier with logits output."""
    inputs = keras.Input((input_dim,))
    h = keras.layers.Dense(
        hidden,
        activation=activation,
        kernel_initializer=keras.initializers.GlorotUniform(seed),
    )(inputs)
    if dropout:
        h = keras.layers.Dropout(dropout, seed=seed)(h)
    outputs = keras.layers.Dense(
        classes, kernel_initializer=keras.initializers.GlorotUniform(seed + 1)
    )(h)
    return keras.Model(inputs, outputs, name=name)


def frozen_backbone_cnn():
    """A CNN whose convolutional backbone (BatchNorm included) is frozen."""
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    backbone = keras.Model(inputs, h, name="backbone")
    inputs = keras.Input((6, 6, 2))
    outputs = keras.layers.Dense(3, name="head")(backbone(inputs))
    model = keras.Model(inputs, outputs)
    # Moving statistics away from their initial values, as after training.
    bn = backbone.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))
    backbone.trainable = False
    return model


def perturbed_copy(model, scale=0.3, seed=1):
    """A copy of `model` whose weights differ by Gaussian noise."""
    copy = keras.models.clone_model(model)
    rng = np.random.default_rng(seed)
    copy.set_weights(
        [
            w + scale * rng.normal(size=w.shape).astype(w.dtype)
            for w in model.get_weights()
        ]
    )
    return copy


def assert_close_across_op_orders(actual, expected, *, dtype, terms):
    """Asserts that two computations of the same values in `dtype` agree
    to within what a different order of their operations can change.

    Two graphs (eager and traced, oneDNN on and off, XLA, another
    instruction set) may sum the same products in another order. Each
    sum of `terms` values in `dtype` is then off by at most `terms` times
    the dtype's machine epsilon, relative to the sum of the magnitudes
    (Higham, "Accuracy and Stability of Numerical Algorithms", 4.2): the
    tolerance is that bound, relative to the largest value compared. Use
    it only where the computations differ; where the very same one runs
    twice, results are bit-identical and `assert_array_equal` applies.

    Args:
        actual, expected: Arrays (or structures of arrays) of equal shape.
        dtype: The computation's dtype, e.g. `"float32"`.
        terms: Int, the longest chain of additions in the computation (for
            a stack of layers, the sum of each layer's reduction length).
    """
    tolerance = terms * float(np.finfo(dtype).eps)
    for a, e in zip(
        keras.tree.flatten(actual), keras.tree.flatten(expected), strict=True
    ):
        a, e = np.asarray(a), np.asarray(e)
        scale = max(float(np.max(np.abs(e), initial=0.0)), 1.0)
        np.testing.assert_allclose(a, e, rtol=0, atol=tolerance * scale)


def classification_data(n=32, input_dim=6, classes=3, seed=0):
    """Random float32 inputs, int labels and positive sample weights."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, input_dim)).astype("float32")
    y = rng.integers(0, classes, size=n).astype("int32")
    weights = rng.uniform(0.1, 2.0, size=n).astype("float32")
    return x, y, weights


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_mlp_logits(weights, x):
    """Forward pass of `mlp()` (without dropout) in numpy."""
    w1, b1, w2, b2 = weights
    return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2


def assert_same_trained_weights(weights, expected, initial, atol=1e-5):
    """`weights` equal `expected`, which moved away from `initial`.

    The update check keeps the comparison from passing vacuously when
    training changed nothing.
    """
    update = max(
        np.abs(a - b).max() for a, b in zip(expected, initial, strict=True)
    )
    assert update > 1e-2
    for a, b in zip(weights, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=atol)


_collective_key_base = 0


def move_collective_keys():
    """Gives the next `MirroredStrategy` of this process keys of its own.

    Each strategy numbers its collectives from its class's key base, so
    two strategies in one process would reuse keys: a collective of one
    model would then meet another model's tensors and abort every later
    collective of the process. TensorFlow's own tests move the base.
    """
    global _collective_key_base
    _collective_key_base += 100_000
    tf.distribute.MirroredStrategy._collective_key_base = _collective_key_base


def two_cpu_strategy(*, through_one_device=False):
    """A `MirroredStrategy` over the two logical CPUs of `conftest.py`.

    `through_one_device` reduces through one device rather than
    collectives: collective instance keys restart with each strategy, and
    two such strategies in one process would exchange tensors of other
    models' shapes.
    """
    kwargs = {}
    if through_one_device:
        kwargs["cross_device_ops"] = tf.distribute.ReductionToOneDevice()
    move_collective_keys()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], **kwargs)
    assert strategy.num_replicas_in_sync == 2
    return strategy


def assert_mirrored_equals_one_device(
    train, initial, *, keys=None, through_one_device=False
):
    """`train(strategy)` gives the same weights and logs on two replicas as
    on one device.

    `train` returns `(weights, history.history)`; `initial` are the
    weights before training, so that an untrained model cannot pass.
    `keys` are the logs compared, all of them (which must match) if `None`.
    """
    one_weights, one_logs = train(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two_weights, two_logs = train(
        two_cpu_strategy(through_one_device=through_one_device)
    )
    assert_same_trained_weights(two_weights, one_weights, initial)
    if keys is None:
        assert set(two_logs) == set(one_logs)
        keys = list(one_logs)
    for key in keys:
        assert two_logs[key][0] == pytest.approx(one_logs[key][0], rel=1e-5)


def keras_round_trip(model, directory, name="model.keras"):
    """`model` saved to `directory/name` and loaded back."""
    path = str(directory / name)
    model.save(path)
    return keras.models.load_model(path)


def assert_step_matches_float32(deltas, deltas32, *, relative=2e-3):
    """Weight updates `deltas` equal the float32 ones `deltas32` within
    `relative` of the largest float32 update."""
    for delta, delta32 in zip(deltas, deltas32, strict=True):
        np.testing.assert_allclose(
            delta, delta32, atol=relative * np.abs(delta32).max()
        )


def count_predicts(model, monkeypatch):
    """Records the calls of `model.teacher.predict`."""
    calls = []
    predict = model.teacher.predict

    def counted(*args, **kwargs):
        calls.append(args)
        return predict(*args, **kwargs)

    monkeypatch.setattr(model.teacher, "predict", counted)
    return calls


def live_traced_graphs():
    """How many graphs of traced functions the process still holds."""
    gc.collect()
    return sum(isinstance(o, tf.Graph) for o in gc.get_objects())


def run_binary(module, *args, timeout=300):
    """Runs `python -m module *args` from the repository's root, on the
    CPU, and returns its completed process."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=_ROOT,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def backed_up_epoch(backup_dir):
    """The epoch a `BackupAndRestore` backup in `backup_dir` resumes at, 0
    where there is none (yet)."""
    try:
        with open(os.path.join(backup_dir, "training_metadata.json")) as file:
            return json.load(file)["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def truncate_half(file):
    """Cuts `file` to half its size: a path, or the in-memory file that
    `keras_sft`'s `save_weights` has Keras write first."""
    if isinstance(file, (str, os.PathLike)):
        with open(file, "r+b") as opened:
            opened.truncate(os.path.getsize(file) // 2)
    else:
        file.truncate(len(file.getvalue()) // 2)


def interrupt_third_weights_save(monkeypatch):
    """Makes the third `save_weights` of the test write half its file, then
    raise `KeyboardInterrupt`, as a Ctrl-C in the middle of the third
    backup does (a valid HDF5 start, arrays missing)."""
    save_weights = keras.Model.save_weights
    calls = []

    def interrupted(self, filepath, *args, **kwargs):
        calls.append(filepath)
        save_weights(self, filepath, *args, **kwargs)
        if len(calls) == 3:
            truncate_half(filepath)
            raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save_weights", interrupted)
