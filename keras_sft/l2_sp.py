"""L2-SP: weight-space regularisation towards the pretrained weights.

The weight-space counterpart of SFT's output-space consistency term, offered
so that both can be compared on the same data: instead of keeping the
student's *outputs* near the teacher's, L2-SP keeps its *weights* near the
pretrained ones,

    Omega(w) = alpha * ||w - w0||^2

summed over the pretrained weights. It is added through Keras's own
mechanism for weight regularizers (`variable.regularizer`), so it enters
`model.losses`, and therefore the loss of `model.fit` and of `SFTModel`,
scaled per replica like any Keras regularizer.

Reference:
    Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning
    with Convolutional Networks", ICML 2018 (https://arxiv.org/abs/1802.01483).
"""

import keras
from keras import ops

from keras_sft import _checks


class L2SP(keras.regularizers.Regularizer):
    """`alpha * ||w - w0||^2` for one weight `w` with pretrained value `w0`.

    Args:
        reference: A `keras.Variable` (non-trainable) holding `w0`.
        alpha: Float >= 0, the strength.
    """

    def __init__(self, reference, alpha):
        self.reference = reference
        self.alpha = alpha

    def __call__(self, x):
        return self.alpha * ops.sum(ops.square(x - self.reference))


def apply_l2_sp(model, alpha):
    """Regularises every trainable weight of `model` towards its value now.

    Call it on the pretrained model before fine-tuning (inside the strategy
    scope, if any: the reference copies are variables). A weight's previous
    regularizer, if any, is replaced. The regularizers hold the pretrained
    values, so they are a training device and are not meant for saving:
    save the fine-tuned model after `remove_l2_sp`.

    Example:

    ```python
    model = keras.models.load_model("pretrained.keras")
    apply_l2_sp(model, alpha=0.01)
    model.compile(optimizer="adam", loss=...)
    model.fit(new_data)
    remove_l2_sp(model)
    ```

    Args:
        model: A built `keras.Model`.
        alpha: Float >= 0, the strength of the penalty.

    Returns:
        `model`, regularised in place.
    """
    _checks.check_float("alpha", alpha)
    for variable in model.trainable_weights:
        # A host copy: initialising from `variable.value` would alias it.
        reference = keras.Variable(
            ops.convert_to_numpy(variable),
            trainable=False,
            name=f"{variable.name}_pretrained",
        )
        variable.regularizer = L2SP(reference, float(alpha))
    return model


def remove_l2_sp(model):
    """Removes the regularizers that `apply_l2_sp` set on `model`."""
    for variable in model.weights:
        if isinstance(variable.regularizer, L2SP):
            variable.regularizer = None
    return model
