"""Label-aware consistency terms: candidates measured, not kept.

Where the teacher is confidently wrong about a labelled new example, a
consistency term on that example pulls the student toward the wrong
answer. Three ways of stopping it, each `normalized_mse`
(`keras_sft.distances`) changed where the label disagrees with the
teacher, were measured by `benchmarks.defaults` against `normalized_mse`
itself; none did better in the worst case over families, shifts and
seeds (docs/forgetting.md), so none is in the library. They stay here so
that the measurement can be repeated:

- `non_target`: the label's class is left out of the term; the other
  classes are centred and scaled among themselves. The mean-squared form
  of the non-target part of decoupled knowledge distillation (Zhao et
  al., "Decoupled Knowledge Distillation", CVPR 2022,
  https://arxiv.org/abs/2203.08679).
- `corrected`: the teacher's logits of the label's class and of its top
  class swap places before the term, so the corrected teacher ranks the
  label first (the knowledge adjustment of Wen et al., "Preparing
  Lessons: Improve Knowledge Distillation with Better Supervision",
  Neurocomputing 2021, https://arxiv.org/abs/1911.07471).
- `trusted`: each example's term is weighted by the teacher's
  probability of the label: nothing where the teacher is surely wrong.

`LabelAwareSFT` trains a single-output classifier with one of them, as
`SFTModel` trains with a distance (task loss plus `lambda_` times the
batch mean of the term, the teacher frozen and in inference mode), on
one device and without sample weights: enough for the benchmark.
"""

import keras
import tensorflow as tf
from keras import ops

import keras_sft
from keras_sft import distances

# What `normalized_mse` adds to the teacher's variance (1e-6 until
# 2026-12-07, when docs/forgetting.md measured these terms), so that the
# masked term over every unit is the library's distance.
_VARIANCE = distances._NORMALIZED_MSE_VARIANCE


def _masked_normalized_mse(teacher, student, mask):
    """`normalized_mse` over the units where `mask` is 1."""
    count = ops.sum(mask, axis=-1, keepdims=True)
    teacher_centred = (
        teacher - ops.sum(mask * teacher, axis=-1, keepdims=True) / count
    )
    student_centred = (
        student - ops.sum(mask * student, axis=-1, keepdims=True) / count
    )
    scale = ops.stop_gradient(
        ops.sqrt(
            ops.sum(mask * ops.square(teacher_centred), -1, keepdims=True)
            / count
            + _VARIANCE
        )
    )
    squared = ops.square((student_centred - teacher_centred) / scale)
    return ops.sum(mask * squared, axis=-1) / ops.squeeze(count, -1)


def _one_hot(labels, teacher):
    """The labels as one-hot float32 vectors over the teacher's units."""
    return ops.one_hot(ops.cast(labels, "int32"), teacher.shape[-1])


def non_target(teacher, student, labels):
    """`normalized_mse` over every unit but the label's."""
    return _masked_normalized_mse(
        teacher, student, 1.0 - _one_hot(labels, teacher)
    )


def corrected(teacher, student, labels):
    """`normalized_mse` to the teacher with its top class and the label's
    logits swapped (unchanged where its top class is the label)."""
    label = _one_hot(labels, teacher)
    top = ops.one_hot(ops.argmax(teacher, axis=-1), teacher.shape[-1])
    label_logit = ops.sum(teacher * label, axis=-1, keepdims=True)
    top_logit = ops.max(teacher, axis=-1, keepdims=True)
    swapped = (
        teacher
        + label * (top_logit - label_logit)
        + top * (label_logit - top_logit)
    )
    return _masked_normalized_mse(swapped, student, ops.ones_like(teacher))


def trusted(teacher, student, labels):
    """`normalized_mse` weighted by the teacher's probability of the label."""
    trust = ops.sum(
        ops.softmax(teacher, axis=-1) * _one_hot(labels, teacher), axis=-1
    )
    return ops.stop_gradient(trust) * _masked_normalized_mse(
        teacher, student, ops.ones_like(teacher)
    )


def normalized(teacher, student, labels):
    """`normalized_mse` itself, labels unused: checks `LabelAwareSFT`
    against `SFTModel`."""
    del labels
    return _masked_normalized_mse(teacher, student, ops.ones_like(teacher))


TERMS = {
    "non_target": non_target,
    "corrected": corrected,
    "trusted": trusted,
    "normalized": normalized,
}


class LabelAwareSFT(keras.Model):
    """SFT of a single-output classifier with a term of `TERMS`.

    Args:
        student: `keras.Model` with logits out, trained in place.
        term: String, a name of `TERMS`.
        lambda_: Float >= 0, the term's weight.
    """

    def __init__(self, student, *, term, lambda_, **kwargs):
        super().__init__(**kwargs)
        self.student = student
        self.teacher = keras_sft.clone_teacher(student)
        self.term = TERMS[term]
        self.lambda_ = lambda_
        self.task_loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        )

    def call(self, x, training=None):
        return self.student(x, training=training)

    def train_step(self, data):
        x, y = data
        teacher = ops.cast(self.teacher(x, training=False), "float32")
        with tf.GradientTape() as tape:
            student = self.student(x, training=True)
            distill = ops.mean(
                self.term(teacher, ops.cast(student, "float32"), y)
            )
            loss = self.task_loss(y, student) + self.lambda_ * distill
            if self.student.losses:
                loss += ops.sum(self.student.losses)
        weights = self.student.trainable_weights
        gradients = tape.gradient(loss, weights)
        self.optimizer.apply_gradients(zip(gradients, weights, strict=True))
        return {"loss": loss, "distill_loss": distill}
