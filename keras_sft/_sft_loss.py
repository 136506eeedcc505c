"""Private: `SFTLoss`, the loss terms of `SFTModel`'s step on tensors.

The task and consistency terms over the student's named outputs: teacher
outputs pair with the student outputs of the same name, `compile`'s
`loss` and `loss_weights` spread over the outputs, per-sample weights
broadcast over dense outputs, and the trackers of each term. Computed
with `keras.ops` alone; the number of replicas, which each term is
divided by, comes from the strategy through `_keras_compat`.
"""

import inspect
import math

import keras
from keras import ops

from keras_sft import _keras_compat
from keras_sft import distances


def means(names, term):
    """`keras.metrics.Mean` trackers named `<name>_<term>`, by name."""
    return {name: keras.metrics.Mean(name=f"{name}_{term}") for name in names}


def task_log_names(names, features):
    """The log name of each output's task loss, by output name.

    Keras's own `<output>_loss`, so that what reads a plain model's logs
    reads these; `<output>_task_loss` where `<output>_loss` is the name
    of another log: `task_loss` (an output named `task`), `distill_loss`
    (`distill`) or `<name>_distill_loss` of an output or a feature
    `<name>` (an output named `<name>_distill`).
    """
    taken = {"task_loss", "distill_loss"}
    taken |= {f"{name}_distill_loss" for name in [*names, *features]}
    return {
        name: f"{name}_task_loss" if f"{name}_loss" in taken else f"{name}_loss"
        for name in names
    }


def trackers(student_names, distilled, features):
    """The trackers of `SFTModel`'s loss terms, made with the model (so
    inside a strategy's scope): `task_loss`, `distill_loss`, then by name
    the per-output task (`task_log_names`) and distill terms (for several
    outputs) and the per-feature distill terms."""
    several = student_names is not None and len(student_names) > 1
    task_names = task_log_names(
        student_names if several else [], features or []
    )
    return (
        keras.metrics.Mean(name="task_loss"),
        keras.metrics.Mean(name="distill_loss"),
        {
            name: keras.metrics.Mean(name=log_name)
            for name, log_name in task_names.items()
        },
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
    replicas = _keras_compat.num_replicas()
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
        return expand_sample_weight(sample_weight, y_pred)
    predictions = by_name(y_pred, names)
    if sample_weight is None:
        return dict.fromkeys(predictions)
    if keras.tree.is_nested(sample_weight):
        weights = by_name(sample_weight, list(predictions))
    else:
        weights = dict.fromkeys(predictions, sample_weight)
    return {
        name: expand_sample_weight(weights.get(name), output)
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
        model_loss: Callable `(x, y, y_pred, sample_weight, training)`, a
            model's own loss (`own_compute_loss`), or `None`. When given, it
            is the whole task loss, on the labels and sample weights as
            they come, in place of `task_loss`, `loss` and `loss_weights`.
            Defaults to `None`.
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
        model_loss=None,
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
        self.model_loss = model_loss

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
        x=None,
        training=True,
    ):
        """Returns `(total, terms)`, each scaled per replica.

        `terms` maps log names (`task_loss`, `distill_loss`, then
        `<output>_loss` (`task_log_names`), `<output>_distill_loss` for
        several outputs and `<layer>_distill_loss` per feature) to their
        values.
        `features` is `(teacher_features, student_features)`, dicts by
        layer name; `regularization` the student's regularization losses.
        `anchors`, `((teacher_outputs, teacher_features), (student_outputs,
        student_features))` on a batch of anchor inputs, or `None`, adds
        the consistency term on them, unweighted: alone where
        `teacher_pred` is `None`, else each consistency term is the mean
        of its values on the batch and on the anchors. `x`, the inputs,
        and `training` go to `model_loss` alone.
        """
        weights = output_sample_weights(
            y_pred, sample_weight, self.student_names
        )
        if self.model_loss is None:
            task_loss, task_terms = self.task_terms(y, y_pred, weights)
        else:
            task_loss = ops.cast(
                self.model_loss(x, y, y_pred, sample_weight, training),
                "float32",
            )
            task_terms = {}
            # A model's own loss adds its regularization losses itself, as
            # in its own `fit` (Keras's `compute_loss` does).
            regularization = ()
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
            total += (
                ops.cast(ops.sum(loss), "float32")
                / _keras_compat.num_replicas()
            )
        return total, {
            "task_loss": task_loss,
            "distill_loss": distill_loss,
            **task_terms,
            **terms,
        }

    def step_terms(
        self, batch, teacher, student, lambda_, regularization, *, training=True
    ):
        """`(total, terms)` of a step on `batch` (a `_batch.Batch`), as
        `__call__`; `teacher` and `student` are `_teacher_outputs.Views`,
        the teacher's `inputs` `None` where the consistency term is on
        the anchors alone; `training` says whether the step trains."""
        on_inputs = teacher.inputs
        return self(
            batch.y,
            student.inputs.outputs,
            None if on_inputs is None else on_inputs.outputs,
            batch.sample_weight,
            lambda_=lambda_,
            features=({}, {})
            if on_inputs is None
            else (on_inputs.features, student.inputs.features),
            regularization=regularization,
            anchors=None
            if teacher.anchors is None
            else (teacher.anchors, student.anchors),
            x=batch.x,
            training=training,
        )

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
        """The weighted task loss and `{<output>_loss: unweighted}`, by
        `task_log_names`."""
        if not keras.tree.is_nested(y_pred):
            return self.task_loss(y, y_pred, weights), {}
        predictions = by_name(y_pred, self.student_names)
        labels = by_name(y, list(predictions))
        total = 0.0
        terms = {}
        losses = output_losses(self.loss, self.loss_weights, list(predictions))
        log_names = task_log_names(list(predictions), self.distill_features)
        for name, (loss, loss_weight) in losses.items():
            value = ops.cast(
                loss(labels[name], predictions[name], weights[name]), "float32"
            )
            total += value if loss_weight is None else loss_weight * value
            terms[log_names[name]] = value
        return total, terms

    def distill_terms(self, teacher_pred, y_pred, weights):
        """The weighted distance and `{<output>_distill_loss: unweighted}`."""
        if self.distill_outputs == []:
            return 0.0, {}
        if not keras.tree.is_nested(teacher_pred) and not keras.tree.is_nested(
            y_pred
        ):
            return self.distance_loss(teacher_pred, y_pred, weights), {}
        teacher = by_name(teacher_pred, self.teacher_names)
        student = by_name(y_pred, self.student_names)
        if not isinstance(weights, dict):
            weights = dict.fromkeys(student, weights)
        names = distilled_names(
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
                sample_weight=expand_sample_weight(weights, student),
            )
            total += self.distill_weights.get(name, 1.0) * value
            terms[f"{name}_distill_loss"] = value
        return total, terms


def own_compute_loss(model):
    """`model`'s own loss, where its class overrides `compute_loss`, as a
    callable `(x, y, y_pred, sample_weight, training)`; else `None`.

    A keras-hub object detector's `compute_loss` matches its labels (boxes
    and classes) to its anchors before applying its compiled losses: those
    losses cannot take the labels as they come.
    """
    if type(model).compute_loss is keras.Model.compute_loss:
        return None
    # As Keras's `fit` calls it: `training` only where the override takes
    # it by name (it was added in Keras 3.3).
    takes_training = (
        "training" in inspect.signature(model.compute_loss).parameters
    )

    def model_loss(x, y, y_pred, sample_weight, training):
        if takes_training:
            return model.compute_loss(
                x, y, y_pred, sample_weight, training=training
            )
        return model.compute_loss(x, y, y_pred, sample_weight)

    return model_loss


def by_name(values, names):
    """Maps output names to `values`: a dict, a list in output order, or one."""
    if isinstance(values, dict):
        return dict(values)
    if isinstance(values, (list, tuple)):
        names = names or [f"output_{i}" for i in range(len(values))]
        return dict(zip(names, values, strict=True))
    return {names[0] if names else "output": values}


def expand_sample_weight(sample_weight, output):
    """Broadcasts per-sample weights `(batch,)` to every position of `output`.

    Keras's loss reduction only reconciles ranks that differ by a trailing
    1, so `(batch,)` weights against per-pixel losses `(batch, H, W)` would
    broadcast along the wrong axis or fail. Per-position weights keep their
    values. Going through `(batch, positions)` works whatever the weights'
    rank, which `tf.function` forgets after retracing for a new shape.
    """
    if sample_weight is None or len(output.shape) <= 2:
        return sample_weight
    positions = ops.shape(output)[:-1]
    flat = ops.reshape(ops.cast(sample_weight, "float32"), (positions[0], -1))
    count = math.prod(positions[1:])
    flat = ops.broadcast_to(flat, (positions[0], count))
    return ops.reshape(flat, positions)


def distilled_names(student_names, teacher_names, distill_outputs):
    """Names of the outputs the distance applies to, `None` if not yet known.

    Teacher outputs pair with the student outputs of the same name, so the
    teacher may have a subset of the student's outputs (for example only
    the old head, when the student has grown a new one). A single-output
    teacher and student pair whatever their names.
    """
    if student_names is None or teacher_names is None:
        return None if distill_outputs is None else list(distill_outputs)
    if len(student_names) == 1 and len(teacher_names) == 1:
        common = list(student_names)
    else:
        common = [name for name in teacher_names if name in student_names]
    if distill_outputs is None:
        if len(common) != len(teacher_names):
            raise ValueError(
                "Invalid value for argument `teacher`. Expected every teacher "
                "output to have a student output of the same name (or name "
                "the outputs to keep close with `distill_outputs`). Received: "
                f"teacher outputs {teacher_names}, student outputs "
                f"{student_names}"
            )
        return common
    unknown = [name for name in distill_outputs if name not in common]
    if unknown:
        raise ValueError(
            "Invalid value for argument `distill_outputs`. Expected names of "
            f"outputs of both the student and the teacher, among {common}. "
            f"Received: distill_outputs={distill_outputs!r}"
        )
    return list(distill_outputs)


def per_output(value, names, argument):
    """Spreads a `compile` argument (one, list or dict) over output names."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(
                f"Invalid value for argument `{argument}`. Expected keys "
                f"among the student's outputs {names}. Received: "
                f"{argument}={value!r}"
            )
        return {name: value.get(name) for name in names}
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ValueError(
                f"Invalid value for argument `{argument}`. Expected one entry "
                f"per student output {names}. Received: {argument}={value!r}"
            )
        return dict(zip(names, value, strict=True))
    return dict.fromkeys(names, value)


def output_losses(loss, loss_weights, names):
    """Maps each output name with a task loss to `(loss, weight or None)`."""
    losses = per_output(loss, names, "loss")
    weights = per_output(loss_weights, names, "loss_weights")
    resolved = {}
    for name in names:
        if losses[name] is None:
            continue
        output_loss = keras.losses.get(losses[name])
        if not isinstance(output_loss, keras.losses.Loss):
            output_loss = FunctionLoss(output_loss)
        resolved[name] = (output_loss, weights[name])
    return resolved


class FunctionLoss(keras.losses.Loss):
    """A loss function given by name or as a callable, as a Keras `Loss`."""

    def __init__(self, function):
        super().__init__(name="function_loss")
        self.function = function

    def call(self, y_true, y_pred):
        return self.function(y_true, y_pred)
