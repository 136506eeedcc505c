import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from keras_sft import distances
from tests import helpers

NAMES = ["mse", "squared_l2", "kl", "normalized_mse"]


def _pair(shape=(4, 5), seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=shape).astype("float32"),
        rng.normal(size=shape).astype("float32"),
    )


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_mse_is_mean_over_units():
    t, s = _pair()
    expected = ((s - t) ** 2).mean(axis=-1)
    np.testing.assert_allclose(distances.mse(t, s), expected, rtol=1e-6)


def test_squared_l2_is_sum_over_units():
    t, s = _pair()
    expected = ((s - t) ** 2).sum(axis=-1)
    np.testing.assert_allclose(distances.squared_l2(t, s), expected, rtol=1e-6)


def _normalized_mse_numpy(t, s):
    """The centred, teacher-scaled MSE, in float64, loop-free numpy."""
    t, s = t.astype("float64"), s.astype("float64")
    t_centred = t - t.mean(axis=-1, keepdims=True)
    s_centred = s - s.mean(axis=-1, keepdims=True)
    scale = np.sqrt(t_centred.var(axis=-1, keepdims=True) + 1.0)
    return (((s_centred - t_centred) / scale) ** 2).mean(axis=-1)


def test_normalized_mse_matches_numpy():
    t, s = _pair()
    np.testing.assert_allclose(
        distances.normalized_mse(t, s),
        _normalized_mse_numpy(t, s),
        rtol=1e-5,
    )


def test_normalized_mse_of_pixel_outputs_is_per_position():
    t, s = _pair((2, 3, 3, 4))
    result = distances.normalized_mse(t, s)
    assert tuple(result.shape) == (2, 3, 3)
    np.testing.assert_allclose(result, _normalized_mse_numpy(t, s), rtol=1e-5)


def test_normalized_mse_ignores_the_offset_and_the_scale_of_spread_logits():
    t, s = _pair()
    # Each example shifted: softmax's invariance leaves it unchanged.
    offset = np.arange(4, dtype="float32")[:, None]
    np.testing.assert_allclose(
        distances.normalized_mse(t + offset, s - offset),
        distances.normalized_mse(t, s),
        rtol=1e-5,
    )
    # Logits spread over a hundred logits, ten times more: within 0.2%.
    np.testing.assert_allclose(
        distances.normalized_mse(1000 * t, 1000 * s),
        distances.normalized_mse(100 * t, 100 * s),
        rtol=2e-3,
    )


def test_normalized_mse_never_exceeds_the_centred_mse():
    # The teacher hesitates on the first examples (logits 1e-3 apart), is
    # certain on the last: no example weighs more than under `mse`.
    rng = np.random.default_rng(3)
    t = np.concatenate(
        [rng.normal(scale=1e-3, size=(3, 2)), rng.normal(size=(3, 2)) * 20]
    ).astype("float32")
    s = rng.normal(size=(6, 2)).astype("float32")
    centred = lambda z: z - z.mean(-1, keepdims=True)  # noqa: E731
    centred_mse = ((centred(s) - centred(t)) ** 2).mean(-1)

    result = keras.ops.convert_to_numpy(distances.normalized_mse(t, s))

    assert np.all(result <= centred_mse * (1 + 1e-6))
    np.testing.assert_allclose(result[:3], centred_mse[:3], rtol=1e-5)
    np.testing.assert_allclose(result, _normalized_mse_numpy(t, s), rtol=1e-5)


def test_normalized_mse_of_constant_teacher_logits_is_finite():
    t = np.zeros((2, 5), "float32")
    _, s = _pair((2, 5))
    result = distances.normalized_mse(t, s)
    np.testing.assert_allclose(result, _normalized_mse_numpy(t, s), rtol=1e-5)


def test_normalized_mse_treats_the_teacher_scale_as_a_constant():
    t, s = _pair()
    teacher = tf.constant(t)
    student = tf.constant(s)
    with tf.GradientTape() as tape:
        tape.watch(teacher)
        value = tf.reduce_sum(distances.normalized_mse(teacher, student))
    gradient = tape.gradient(value, teacher).numpy()
    # With the scale fixed, d/dt of sum(((s_c - t_c) / scale)^2) / units.
    t_centred = t - t.mean(-1, keepdims=True)
    s_centred = s - s.mean(-1, keepdims=True)
    scale2 = t_centred.var(-1, keepdims=True) + 1.0
    residual = -2 * (s_centred - t_centred) / scale2 / t.shape[-1]
    expected = residual - residual.mean(-1, keepdims=True)
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6)


def test_sft_model_accepts_normalized_mse():
    x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2])
    student = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    teacher = keras_sft.clone_teacher(student)
    # A different offset per weight: the outputs then differ by more than
    # a per-example shift, to which the distance is invariant, so the
    # expected value is far from zero and the comparison is not one of
    # rounding noise.
    rng = np.random.default_rng(1)
    student.set_weights(
        [w + rng.normal(scale=0.6, size=w.shape) for w in student.get_weights()]
    )
    model = keras_sft.SFTModel(
        student, teacher, lambda_=1.0, distance="normalized_mse"
    )
    model.compile(optimizer="sgd")
    logs = model.evaluate(x, y, batch_size=6, return_dict=True, verbose=0)
    expected = _normalized_mse_numpy(
        teacher.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    assert expected.mean() > 0.1
    assert logs["distill_loss"] == pytest.approx(expected.mean(), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_matches_numpy(temperature):
    t, s = _pair()
    log_p = _log_softmax(t.astype("float64") / temperature)
    log_q = _log_softmax(s.astype("float64") / temperature)
    expected = temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)
    np.testing.assert_allclose(
        distances.kl(t, s, temperature=temperature),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("name", NAMES)
def test_distance_of_identical_outputs_is_zero(name):
    t, _ = _pair()
    np.testing.assert_allclose(distances.DISTANCES[name](t, t), 0.0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_float16_inputs_are_computed_in_float32(name):
    t, s = _pair()
    t, s = 300 * t, 300 * s  # squares overflow float16
    result = distances.DISTANCES[name](t.astype("float16"), s.astype("float16"))
    assert keras.backend.standardize_dtype(result.dtype) == "float32"
    assert np.all(np.isfinite(result))


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_is_refused(name):
    t, _ = _pair((4, 5))
    _, s = _pair((4, 1))  # would broadcast silently without the check
    with pytest.raises(ValueError, match="must have the same shape"):
        distances.DISTANCES[name](t, s)


def test_distance_loss_honours_sample_weight():
    t, s = _pair()
    weights = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    loss = distances.DistanceLoss("mse")
    per_sample = ((s - t) ** 2).mean(axis=-1)
    # Keras's "sum_over_batch_size": weighted sum over the batch size.
    expected = (per_sample * weights).sum() / len(weights)
    np.testing.assert_allclose(
        loss(t, s, sample_weight=weights), expected, rtol=1e-6
    )


def test_normalized_mse_is_mse_on_outputs_of_one_unit():
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 5, 1)).astype("float32")
    np.testing.assert_allclose(
        distances.normalized_mse(teacher, student),
        ((teacher - student) ** 2)[:, 0],
        rtol=1e-6,
    )
    inputs = keras.Input((3,))
    student_model = keras.Model(
        inputs, keras.layers.Dense(1, name="logit")(inputs)
    )
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.integers(0, 2, size=(8, 1)).astype("float32")
    # At the defaults a binary classifier trains; its term is `mse`'s.
    model = keras_sft.SFTModel(student_model)
    model.compile(
        optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True)
    )
    student_model.layers[-1].bias.assign([0.5])
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    expected = (
        keras.ops.convert_to_numpy(student_model(x))
        - keras.ops.convert_to_numpy(model.teacher(x))
    ) ** 2
    np.testing.assert_allclose(logs["distill_loss"], expected.mean(), rtol=1e-5)
    assert logs["distill_loss"] > 0.1


def test_defaults_are_the_measured_ones():
    model = keras_sft.SFTModel(helpers.mlp())
    assert (model.lambda_, model.distance) == (0.3, "normalized_mse")
