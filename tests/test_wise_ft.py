import keras
import numpy as np
import pytest

import keras_sft
from tests import helpers


def _pair():
    pretrained = helpers.mlp(seed=0)
    fine_tuned = helpers.perturbed_copy(pretrained, scale=0.5, seed=3)
    return pretrained, fine_tuned


def test_weights_interpolate_as_numpy_computes():
    pretrained, fine_tuned = _pair()
    mixed = keras_sft.wise_ft(fine_tuned, pretrained, alpha=0.3)
    for w, w0, w1 in zip(
        mixed.get_weights(),
        pretrained.get_weights(),
        fine_tuned.get_weights(),
        strict=True,
    ):
        np.testing.assert_allclose(w, 0.7 * w0 + 0.3 * w1, rtol=1e-6, atol=1e-7)
    x, _, _ = helpers.classification_data(n=5)
    np.testing.assert_allclose(
        mixed.predict(x, verbose=0),
        helpers.numpy_mlp_logits(mixed.get_weights(), x),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_end_points_are_the_two_models_exactly(alpha):
    pretrained, fine_tuned = _pair()
    mixed = keras_sft.wise_ft(fine_tuned, pretrained, alpha=alpha)
    expected = pretrained if alpha == 0.0 else fine_tuned
    for a, b in zip(mixed.get_weights(), expected.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_inputs_are_left_unchanged_and_not_shared():
    pretrained, fine_tuned = _pair()
    before = [w.copy() for w in fine_tuned.get_weights()]
    mixed = keras_sft.wise_ft(fine_tuned, pretrained)
    mixed.set_weights([np.zeros_like(w) for w in before])
    for a, b in zip(fine_tuned.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sft_model_interpolates_student_with_its_teacher():
    student = helpers.mlp()
    model = keras_sft.SFTModel(student, lambda_=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    x, y, _ = helpers.classification_data()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    mixed = keras_sft.wise_ft(model, alpha=0.5)
    for w, w0, w1 in zip(
        mixed.get_weights(),
        model.teacher.get_weights(),
        student.get_weights(),
        strict=True,
    ):
        np.testing.assert_allclose(w, (w0 + w1) / 2, rtol=1e-6, atol=1e-7)
    assert np.abs(student.get_weights()[0] - mixed.get_weights()[0]).max() > 0


def test_batch_norm_statistics_interpolate_and_integers_are_kept():
    inputs = keras.Input((3,))
    outputs = keras.layers.BatchNormalization()(inputs)
    pretrained = keras.Model(inputs, outputs)
    fine_tuned = helpers.perturbed_copy(pretrained, scale=1.0)
    mixed = keras_sft.wise_ft(fine_tuned, pretrained, alpha=0.25)
    moving_mean = mixed.layers[1].moving_mean.numpy()
    np.testing.assert_allclose(
        moving_mean,
        0.75 * pretrained.layers[1].moving_mean.numpy()
        + 0.25 * fine_tuned.layers[1].moving_mean.numpy(),
        rtol=1e-6,
    )


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), True, "half"])
def test_bad_alpha_is_refused(alpha):
    pretrained, fine_tuned = _pair()
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `alpha`. Expected a float between "
        r"0 and 1. Received: alpha=",
    ):
        keras_sft.wise_ft(fine_tuned, pretrained, alpha=alpha)


def test_missing_or_mismatched_pretrained_is_refused():
    pretrained, fine_tuned = _pair()
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `pretrained`. Expected a "
        r"`keras.Model` \(it may be omitted only for a "
        r"`keras_sft.SFTModel`\). Received: pretrained=None",
    ):
        keras_sft.wise_ft(fine_tuned)
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `pretrained`. Expected the weight "
        r"shapes of the fine-tuned model",
    ):
        keras_sft.wise_ft(fine_tuned, helpers.mlp(hidden=4))
