"""Distances between teacher and student outputs.

Each distance is a pure function of two tensors of the same shape that
reduces the last (output-unit) axis and returns one value per remaining
position, in float32: one per sample for logits `(batch, classes)`, one
per pixel for `(batch, H, W, classes)`. Reduction over the batch, sample
weights and the scaling across replicas are left to `keras.losses.Loss`,
exactly as for Keras's own losses, through `DistanceLoss`: its
"sum_over_batch_size" divides by the number of values, so per-pixel
distances are averaged over every non-batch axis.

References:
    Li & Hoiem, "Learning without Forgetting", TPAMI 2017
    (https://arxiv.org/abs/1606.09282), for the temperature-scaled KL form.
    Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024
    (https://arxiv.org/abs/2403.01427), for standardising logits per
    example before comparing them (`normalized_mse`).
"""

import keras
from keras import ops


def _check_shapes(teacher_outputs, student_outputs):
    """Raises `ValueError` unless both outputs have the same static shape."""
    teacher_shape = tuple(teacher_outputs.shape)
    student_shape = tuple(student_outputs.shape)
    compatible = len(teacher_shape) == len(student_shape) and all(
        t is None or s is None or t == s
        for t, s in zip(teacher_shape, student_shape, strict=True)
    )
    if not compatible:
        raise ValueError(
            "Teacher and student outputs must have the same shape. "
            f"Received: teacher_outputs.shape={teacher_shape}, "
            f"student_outputs.shape={student_shape}"
        )


def _as_float32(teacher_outputs, student_outputs):
    """Casts both outputs to float32 after checking their shapes."""
    teacher_outputs = ops.convert_to_tensor(teacher_outputs)
    student_outputs = ops.convert_to_tensor(student_outputs)
    _check_shapes(teacher_outputs, student_outputs)
    # float16 logits squared overflow past 256; compute every distance in
    # float32 whatever the compute dtype of the models.
    return (
        ops.cast(teacher_outputs, "float32"),
        ops.cast(student_outputs, "float32"),
    )


def mse(teacher_outputs, student_outputs):
    """Mean over output units of the squared difference.

    Takes and returns what `squared_l2` does, divided by the number of
    output units.
    """
    return ops.mean(_squared_difference(teacher_outputs, student_outputs), -1)


def squared_l2(teacher_outputs, student_outputs):
    """Sum over output units of the squared difference, `||t - s||^2`.

    Args:
        teacher_outputs: Tensor of shape `(..., units)`.
        student_outputs: Tensor of the same shape.

    Returns:
        Float32 tensor of shape `(...)`.
    """
    return ops.sum(_squared_difference(teacher_outputs, student_outputs), -1)


def _squared_difference(teacher_outputs, student_outputs):
    """Elementwise `(s - t)^2` in float32, after the shape check."""
    teacher_outputs, student_outputs = _as_float32(
        teacher_outputs, student_outputs
    )
    return ops.square(student_outputs - teacher_outputs)


def kl(teacher_outputs, student_outputs, temperature=1.0):
    """`T^2 * KL(softmax(t / T) || softmax(s / T))` on logits.

    The `T^2` factor keeps the gradient magnitude independent of `T`, as in
    Hinton et al. (2015) and Learning without Forgetting.

    Args:
        teacher_outputs: Logits of shape `(..., classes)`.
        student_outputs: Logits of the same shape.
        temperature: Float > 0, the softmax temperature `T`.

    Returns:
        Float32 tensor of shape `(...)`.
    """
    teacher_outputs, student_outputs = _as_float32(
        teacher_outputs, student_outputs
    )
    teacher_log_probs = ops.log_softmax(teacher_outputs / temperature, axis=-1)
    student_log_probs = ops.log_softmax(student_outputs / temperature, axis=-1)
    kl_divergence = ops.sum(
        ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs),
        axis=-1,
    )
    return temperature**2 * kl_divergence


# Added to the teacher's variance over units: one squared logit. Where the
# teacher's logits spread over several logits it barely counts; where they
# are nearly equal (an example near a binary classifier's boundary, an
# untrained head) the scale is 1 and the distance is the centred `mse`.
# With 1e-6 such an example weighed up to a million times more, and SGD
# with momentum diverged (a digits binary classifier at the defaults,
# learning rate 0.05: loss 1e18; plain fine-tuning trained).
_NORMALIZED_MSE_VARIANCE = 1.0


def normalized_mse(teacher_outputs, student_outputs):
    """`mse` of logits centred per example and scaled by the teacher's std.

    Each output vector has its mean over units subtracted; both are then
    divided by `sqrt(var(t) + 1)`, the teacher's standard deviation over
    units where its logits spread over several logits, 1 where they are
    nearly equal. The distance is therefore invariant to a constant added
    to either, as softmax is, and nearly so to the scale of spread logits
    (`t -> c * t`, `s -> c * s`): one `lambda_` carries across models whose
    logits differ in scale, and an example on which the teacher is
    confidently wrong (large logits) pulls no harder than any other. It
    never exceeds the `mse` of the centred logits, so the term never pulls
    harder than that: an example on which the teacher hesitates (two
    logits nearly equal) is not weighed up, which would make steps that
    are stable for plain fine-tuning diverge. The teacher's statistic is a
    constant of the student's gradient. On outputs of one unit, where
    standardising leaves nothing, it is `mse`.

    Args:
        teacher_outputs: Logits of shape `(..., units)`.
        student_outputs: Logits of the same shape.

    Returns:
        Float32 tensor of shape `(...)`.
    """
    teacher_outputs, student_outputs = _as_float32(
        teacher_outputs, student_outputs
    )
    if teacher_outputs.shape[-1] == 1:
        # Standardised over one unit, every output is 0: the term would
        # vanish. A one-unit output (a binary logit, a regression) keeps
        # its scale.
        return mse(teacher_outputs, student_outputs)
    teacher_centred = teacher_outputs - ops.mean(
        teacher_outputs, axis=-1, keepdims=True
    )
    student_centred = student_outputs - ops.mean(
        student_outputs, axis=-1, keepdims=True
    )
    scale = ops.stop_gradient(
        ops.sqrt(
            ops.mean(ops.square(teacher_centred), axis=-1, keepdims=True)
            + _NORMALIZED_MSE_VARIANCE
        )
    )
    return ops.mean(
        ops.square((student_centred - teacher_centred) / scale), axis=-1
    )


DISTANCES = {
    "mse": mse,
    "squared_l2": squared_l2,
    "kl": kl,
    "normalized_mse": normalized_mse,
}


class DistanceLoss(keras.losses.Loss):
    """A distance as a Keras loss: `y_true` the teacher, `y_pred` the student.

    Going through `keras.losses.Loss` gives the distance the very reduction
    of Keras's own losses: sample weights, `"sum_over_batch_size"`, float32,
    and the division by the number of replicas under `tf.distribute`.

    Args:
        distance: String, a name of `DISTANCES`.
        temperature: Float > 0, used by `"kl"` only. Defaults to `1.0`.
        name: String, name of the loss. Defaults to `"distill_loss"`.
    """

    def __init__(self, distance, temperature=1.0, name="distill_loss"):
        super().__init__(name=name, dtype="float32")
        self.distance = distance
        self.temperature = temperature

    def call(self, y_true, y_pred):
        if self.distance == "kl":
            return kl(y_true, y_pred, temperature=self.temperature)
        return DISTANCES[self.distance](y_true, y_pred)
