import keras
import numpy as np
import pytest

from keras_sft import distances


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


@pytest.mark.parametrize("name", ["mse", "squared_l2", "kl"])
def test_distance_of_identical_outputs_is_zero(name):
    t, _ = _pair()
    np.testing.assert_allclose(distances.DISTANCES[name](t, t), 0.0, atol=1e-6)


@pytest.mark.parametrize("name", ["mse", "squared_l2", "kl"])
def test_float16_inputs_are_computed_in_float32(name):
    t, s = _pair()
    t, s = 300 * t, 300 * s  # squares overflow float16
    result = distances.DISTANCES[name](t.astype("float16"), s.astype("float16"))
    assert keras.backend.standardize_dtype(result.dtype) == "float32"
    assert np.all(np.isfinite(result))


@pytest.mark.parametrize("name", ["mse", "squared_l2", "kl"])
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
