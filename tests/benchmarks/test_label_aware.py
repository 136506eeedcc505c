"""benchmarks.label_aware: the candidate terms against numpy, and its
training step against `SFTModel`'s."""

import keras
import numpy as np

import keras_sft
from benchmarks import label_aware


def _normalized_numpy(t, s, keep):
    """`normalized_mse` over the units where `keep` is true, in float64."""
    t, s = t.astype("float64"), s.astype("float64")
    result = []
    for t_row, s_row, keep_row in zip(t, s, keep, strict=True):
        t_kept, s_kept = t_row[keep_row], s_row[keep_row]
        t_centred = t_kept - t_kept.mean()
        s_centred = s_kept - s_kept.mean()
        scale = np.sqrt(t_centred.var() + 1.0)
        result.append((((s_centred - t_centred) / scale) ** 2).mean())
    return np.array(result)


def _case():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(4, 5)).astype("float32")
    s = rng.normal(size=(4, 5)).astype("float32")
    # The first two labels are the teacher's top class, the others not.
    labels = np.array([t[0].argmax(), t[1].argmax(), 0, 0])
    labels[2:] = [(t[2].argmax() + 1) % 5, (t[3].argmax() + 2) % 5]
    return t, s, labels


def test_non_target_leaves_the_label_out():
    t, s, labels = _case()
    keep = np.arange(5)[None, :] != labels[:, None]
    np.testing.assert_allclose(
        label_aware.non_target(t, s, labels),
        _normalized_numpy(t, s, keep),
        rtol=1e-5,
    )


def test_corrected_swaps_the_label_and_the_top_class():
    t, s, labels = _case()
    swapped = t.copy()
    for row, label in enumerate(labels):
        top = t[row].argmax()
        swapped[row, [label, top]] = t[row, [top, label]]
    np.testing.assert_allclose(
        label_aware.corrected(t, s, labels),
        _normalized_numpy(swapped, s, np.ones_like(t, bool)),
        rtol=1e-5,
    )
    # Where the teacher is right, nothing changes.
    np.testing.assert_allclose(
        label_aware.corrected(t, s, labels)[:2],
        label_aware.normalized(t, s, labels)[:2],
        rtol=1e-6,
    )


def test_trusted_weighs_by_the_teachers_probability_of_the_label():
    t, s, labels = _case()
    probabilities = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    trust = probabilities[np.arange(4), labels]
    np.testing.assert_allclose(
        label_aware.trusted(t, s, labels),
        trust * _normalized_numpy(t, s, np.ones_like(t, bool)),
        rtol=1e-5,
    )


def test_training_step_matches_sft_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 4, 64)

    def trained(wrap):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6,))
        outputs = keras.layers.Dense(4)(keras.layers.Dense(8, "relu")(inputs))
        student = keras.Model(inputs, outputs)
        model = wrap(student)
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return student.get_weights()

    expected = trained(
        lambda student: keras_sft.SFTModel(
            student, lambda_=1.0, distance="normalized_mse"
        )
    )
    found = trained(
        lambda student: label_aware.LabelAwareSFT(
            student, term="normalized", lambda_=1.0
        )
    )
    for a, b in zip(found, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
