"""Tiny models and data shared by the tests."""

import keras
import numpy as np


def mlp(input_dim=6, hidden=8, classes=3, seed=0, dropout=None, name="mlp"):
    """A small built Functional classifier with logits output."""
    inputs = keras.Input((input_dim,))
    h = keras.layers.Dense(
        hidden,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed),
    )(inputs)
    if dropout:
        h = keras.layers.Dropout(dropout, seed=seed)(h)
    outputs = keras.layers.Dense(
        classes, kernel_initializer=keras.initializers.GlorotUniform(seed + 1)
    )(h)
    return keras.Model(inputs, outputs, name=name)


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
