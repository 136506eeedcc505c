"""SFTLoss: the loss terms of `SFTModel`'s step, computed on tensors."""

import keras
import tensorflow as tf
from keras import ops

from keras_sft import _keras_compat
from keras_sft import _outputs
from keras_sft import distances


def num_replicas():
    """Number of replicas of the strategy in scope (1 outside any)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def means(names, term):
    """`keras.metrics.Mean` trackers named `<name>_<term>`, by name."""
    return {name: keras.metrics.Mean(name=f"{name}_{term}") for name in names}


def trackers(student_names, distilled, features):
    """The trackers of `SFTModel`'s loss terms, made with the model (so
    inside a strategy's scope): `task_loss`, `distill_loss`, then by name
    the per-output task and distill terms (for several outputs) and the
    per-feature distill terms."""
    several = student_names is not None and len(student_names) > 1
    return (
        keras.metrics.Mean(name="task_loss"),
        keras.metrics.Mean(name="distill_loss"),
        means(student_names if several else [], "task_loss"),
        means(distilled if several else [], "distill_loss"),
        means(features or [], "distill_loss"),
    )


def track(loss_tracker, trackers, x, total, terms):
    """Adds a step's `total` and `terms` (by log name) to their trackers.

    The values are per-replica means divided by the number of replicas;
    the trackers get the undivided means, weighted by the local batch
    size, so that summing over replicas on read gives the global mean.
    Terms without a tracker (per-output terms of single-output logs) are
    left out.
    """
    by_name = {tracker.name: tracker for tracker in trackers}
    first = next(t for t in keras.tree.flatten(x) if t is not None)
    batch_size = ops.cast(ops.shape(first)[0], "float32")
    replicas = num_replicas()
    values = [(loss_tracker, total)]
    values += [(by_name[n], v) for n, v in terms.items() if n in by_name]
    for tracker, value in values:
        if replicas > 1:
            value = value * replicas
        _keras_compat.accumulate(tracker, value, batch_size)


def output_sample_weights(y_pred, sample_weight, names):
    """Sample weights per output, broadcast to each output's positions.

    Returns a tensor for a single output, else a dict by output name
    (`names`, the student's output names, or `None` if unknown).
    """
    if not keras.tree.is_nested(y_pred):
        return _outputs.expand_sample_weight(sample_weight, y_pred)
    predictions = _outputs.by_name(y_pred, names)
    if sample_weight is None:
        return dict.fromkeys(predictions)
    if keras.tree.is_nested(sample_weight):
        weights = _outputs.by_name(sample_weight, list(predictions))
    else:
        weights = dict.fromkeys(predictions, sample_weight)
    return {
        name: _outputs.expand_sample_weight(weights.get(name), output)
        for name, output in predictions.items()
    }


def structured_sample_weight(y_pred, sample_weight, names):
    """Sample weights broadcast per output, in the structure of `y_pred`."""
    if sample_weight is None:
        return None
    weights = output_sample_weights(y_pred, sample_weight, names)
    if isinstance(y_pred, (list, tuple)):
        return list(weights.values())
    return weights


class SFTLoss:
    """The task and consistency terms of `SFTModel`, without a model.

    Computes `task_loss + lambda_ * distill_loss` from labels, student and
    teacher outputs (and features), as `SFTModel.train_step` does. Each
    term is reduced like a Keras loss ("sum_over_batch_size", honouring
    `sample_weight`) and, as Keras's losses are, divided by the number of
    replicas of the strategy in scope, so that summing gradients over
    replicas gives the gradient of the global-batch mean rather than N
    times it.

    Example:

    ```python
    terms = SFTLoss(task_loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    total, logs = terms(y, student_logits, teacher_logits, lambda_=0.5)
    ```

    Args:
        distance: String, a name of `distances.DISTANCES`: `"mse"`,
            `"squared_l2"`, `"kl"` or `"normalized_mse"`. Defaults to
            `"mse"`.
        temperature: Float > 0, the temperature of `"kl"`. Defaults to
            `1.0`.
        task_loss: Callable `(y, y_pred, sample_weight)`, the task loss of
            a single output (in `SFTModel`, Keras's compiled loss).
            Defaults to `None` (no task loss).
        loss: `compile`'s `loss` structure, the task losses of several
            outputs. Defaults to `None`.
        loss_weights: `compile`'s `loss_weights` for several outputs.
            Defaults to `None`.
        student_names: List of the student's output names, or `None`.
        teacher_names: List of the teacher's output names, or `None`.
        distill_outputs: List of output names kept close, `[]` for none,
            or `None` for every teacher output. Defaults to `None`.
        distill_weights: Dict from output or feature name to weight, or
            `None` (weight 1). Defaults to `None`.
        distill_features: List of feature names, or `None`. Defaults to
            `None`.
    """

    def __init__(
        self,
        distance="mse",
        *,
        temperature=1.0,
        task_loss=None,
        loss=None,
        loss_weights=None,
        student_names=None,
        teacher_names=None,
        distill_outputs=None,
        distill_weights=None,
        distill_features=None,
    ):
        self.distance_loss = distances.DistanceLoss(
            distance, temperature=temperature
        )
        self.task_loss = task_loss
        self.loss = loss
        self.loss_weights = loss_weights
        self.student_names = student_names
        self.teacher_names = teacher_names
        self.distill_outputs = distill_outputs
        self.distill_weights = distill_weights or {}
        self.distill_features = distill_features or []

    def __call__(
        self,
        y,
        y_pred,
        teacher_pred,
        sample_weight=None,
        *,
        lambda_=1.0,
        features=({}, {}),
        regularization=(),
        anchors=None,
    ):
        """Returns `(total, terms)`, each scaled per replica.

        `terms` maps log names (`task_loss`, `distill_loss`, then
        `<output>_task_loss`, `<output>_distill_loss` for several outputs
        and `<layer>_distill_loss` per feature) to their values.
        `features` is `(teacher_features, student_features)`, dicts by
        layer name; `regularization` the student's regularization losses.
        `anchors`, `((teacher_outputs, teacher_features), (student_outputs,
        student_features))` on a batch of anchor inputs, or `None`, adds
        the consistency term on them, unweighted: alone where
        `teacher_pred` is `None`, else each consistency term is the mean
        of its values on the batch and on the anchors.
        """
        weights = output_sample_weights(
            y_pred, sample_weight, self.student_names
        )
        task_loss, task_terms = self.task_terms(y, y_pred, weights)
        distill_loss, terms = 0.0, {}
        if teacher_pred is not None:
            distill_loss, terms = self.consistency_terms(
                teacher_pred, y_pred, weights, features, sample_weight
            )
        if anchors is not None:
            (teacher_anchors, teacher_features), student = anchors
            anchor_loss, anchor_terms = self.consistency_terms(
                teacher_anchors,
                student[0],
                None,
                (teacher_features, student[1]),
                None,
            )
            if teacher_pred is None:
                distill_loss, terms = anchor_loss, anchor_terms
            else:
                # The mean, not the sum: `lambda_` keeps its scale whether
                # the term is on the batch, the anchors or both.
                distill_loss = (distill_loss + anchor_loss) / 2
                terms = {
                    name: (value + anchor_terms[name]) / 2
                    for name, value in terms.items()
                }
        total = task_loss + lambda_ * distill_loss
        # Only the student's regularization losses: the teacher's are
        # constant and would inflate the logged loss.
        for loss in regularization:
            total += ops.cast(ops.sum(loss), "float32") / num_replicas()
        return total, {
            "task_loss": task_loss,
            "distill_loss": distill_loss,
            **task_terms,
            **terms,
        }

    def consistency_terms(
        self, teacher_pred, y_pred, weights, features, sample_weight
    ):
        """The weighted distance over outputs and features, and its terms
        by log name."""
        distill_loss, terms = self.distill_terms(teacher_pred, y_pred, weights)
        if self.distill_features:
            feature_loss, feature_terms = self.feature_terms(
                *features, sample_weight
            )
            distill_loss += feature_loss
            terms.update(feature_terms)
        return distill_loss, terms

    def task_terms(self, y, y_pred, weights):
        """The weighted task loss and `{<output>_task_loss: unweighted}`."""
        if not keras.tree.is_nested(y_pred):
            return self.task_loss(y, y_pred, weights), {}
        predictions = _outputs.by_name(y_pred, self.student_names)
        labels = _outputs.by_name(y, list(predictions))
        total = 0.0
        terms = {}
        losses = _outputs.output_losses(
            self.loss, self.loss_weights, list(predictions)
        )
        for name, (loss, loss_weight) in losses.items():
            value = ops.cast(
                loss(labels[name], predictions[name], weights[name]), "float32"
            )
            total += value if loss_weight is None else loss_weight * value
            terms[f"{name}_task_loss"] = value
        return total, terms

    def distill_terms(self, teacher_pred, y_pred, weights):
        """The weighted distance and `{<output>_distill_loss: unweighted}`."""
        if self.distill_outputs == []:
            return 0.0, {}
        if not keras.tree.is_nested(teacher_pred) and not keras.tree.is_nested(
            y_pred
        ):
            return self.distance_loss(teacher_pred, y_pred, weights), {}
        teacher = _outputs.by_name(teacher_pred, self.teacher_names)
        student = _outputs.by_name(y_pred, self.student_names)
        if not isinstance(weights, dict):
            weights = dict.fromkeys(student, weights)
        names = _outputs.distilled_names(
            list(student), list(teacher), self.distill_outputs
        )
        total = 0.0
        terms = {}
        for name in names:
            value = self.distance_loss(
                teacher[name], student[name], sample_weight=weights[name]
            )
            total += self.distill_weights.get(name, 1.0) * value
            terms[f"{name}_distill_loss"] = value
        return total, terms

    def feature_terms(self, teacher_features, student_features, weights):
        """The weighted feature distance and `{<layer>_distill_loss: value}`."""
        total = 0.0
        terms = {}
        for name in self.distill_features:
            student = student_features[name]
            value = self.distance_loss(
                teacher_features[name],
                student,
                sample_weight=_outputs.expand_sample_weight(weights, student),
            )
            total += self.distill_weights.get(name, 1.0) * value
            terms[f"{name}_distill_loss"] = value
        return total, terms
