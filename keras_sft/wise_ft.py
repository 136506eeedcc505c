"""WiSE-FT: weight-space ensembles of pretrained and fine-tuned models.

A complement to SFT that needs no training: after fine-tuning, interpolate
every weight between its pretrained value `w0` and its fine-tuned value `w1`,

    w(alpha) = (1 - alpha) * w0 + alpha * w1,

which keeps more of the pretrained model's robustness as `alpha` falls from 1
(the fine-tuned model) to 0 (the pretrained one). It composes with SFT: the
student fine-tuned with the consistency term is `w1`, its teacher `w0`.

Reference:
    Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022
    (https://arxiv.org/abs/2109.01903).
"""

import math
import numbers

import keras
import numpy as np

from keras_sft.teacher import copy_model


def wise_ft(model, pretrained=None, *, alpha=0.5):
    """Returns a new model whose weights interpolate pretrained and fine-tuned.

    Neither input is changed: the result is a copy of the fine-tuned model
    with each floating-point weight set to `(1 - alpha) * pretrained +
    alpha * fine_tuned` (BatchNormalization statistics included). Integer
    and boolean weights (counters, seeds) keep their fine-tuned values.

    Example:

    ```python
    model = keras_sft.SFTModel(pretrained)
    model.compile(optimizer="adam")
    model.fit(new_data, epochs=5)
    robust = keras_sft.wise_ft(model, alpha=0.5)  # interpolates with teacher
    ```

    Args:
        model: The fine-tuned model: a `keras_sft.SFTModel` (its `student`;
            its `teacher` is the pretrained model unless `pretrained` is
            given) or a built `keras.Model`.
        pretrained: A `keras.Model` with the same weights' shapes as the
            fine-tuned model, or `None` to take `model.teacher` from an
            `SFTModel`. Defaults to `None`.
        alpha: Float in [0, 1], the weight of the fine-tuned model: `0`
            gives the pretrained weights, `1` the fine-tuned ones. Defaults
            to `0.5`.

    Returns:
        A new `keras.Model` of the fine-tuned model's class.
    """
    # Imported here: `sft_model` imports this package's modules.
    from keras_sft.sft_model import SFTModel

    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not math.isfinite(alpha)
        or not 0 <= alpha <= 1
    ):
        raise ValueError(
            "Invalid value for argument `alpha`. Expected a float between 0 "
            f"and 1. Received: alpha={alpha!r}"
        )
    if isinstance(model, SFTModel):
        fine_tuned = model.student
        pretrained = model.teacher if pretrained is None else pretrained
    else:
        fine_tuned = model
    if not isinstance(pretrained, keras.Model):
        raise ValueError(
            "Invalid value for argument `pretrained`. Expected a "
            "`keras.Model` (it may be omitted only for a "
            f"`keras_sft.SFTModel`). Received: pretrained={pretrained!r}"
        )
    start = pretrained.get_weights()
    end = fine_tuned.get_weights()
    shapes = [w.shape for w in end]
    if [w.shape for w in start] != shapes:
        raise ValueError(
            "Invalid value for argument `pretrained`. Expected the weight "
            "shapes of the fine-tuned model, in the same order. Received: "
            f"pretrained={pretrained.name!r} with shapes "
            f"{[w.shape for w in start]}, fine-tuned shapes {shapes}"
        )
    interpolated = copy_model(fine_tuned)
    interpolated.set_weights(
        [_interpolate(w0, w1, alpha) for w0, w1 in zip(start, end, strict=True)]
    )
    return interpolated


def _interpolate(w0, w1, alpha):
    """`(1 - alpha) * w0 + alpha * w1` for floating weights, else `w1`."""
    if not np.issubdtype(w1.dtype, np.floating):
        return w1
    # In float64, then back: the interpolation of float16 weights would
    # otherwise round twice.
    mixed = (1.0 - alpha) * w0.astype("float64") + alpha * w1.astype("float64")
    return mixed.astype(w1.dtype)
