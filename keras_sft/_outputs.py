"""How `SFTModel` names, pairs and weighs the outputs of its models.

A student may return one tensor of any rank, a list or a dict of outputs.
These helpers name each output as `keras.Model.compile` does (dict keys, or
the layers that make list outputs), pair teacher outputs with the student
outputs of the same name, spread `compile`'s `loss` and `loss_weights` over
the outputs, broadcast per-sample weights over dense outputs, and validate
the options that name outputs.
"""

import math

import keras
from keras import ops

from keras_sft import _checks


def output_names(model):
    """Names of a built model's outputs in call order, or `None` if unknown.

    Dict outputs are named by their keys, other outputs by the layer that
    makes them, as `keras.Model.compile` names them.
    """
    if isinstance(model, keras.Sequential) and model.layers:
        # One output, made by its last layer; `model.output` is undefined
        # until the model is called on a symbolic input.
        return [model.layers[-1].name]
    try:
        structure = model.output
    except (AttributeError, ValueError):
        # Subclassed models have no symbolic outputs.
        return None
    if isinstance(structure, dict):
        return list(structure)
    return list(model.output_names)


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


def resolve(student, teacher, distance, distill):
    """`(student_names, teacher_names, distilled)` of an `SFTModel`'s models.

    `distill` is `(distill_outputs, distill_weights, distill_features)`;
    raises `ValueError` where they, the distance or the teacher's output
    shapes do not fit the models' outputs.
    """
    distill_outputs, distill_weights, distill_features = distill
    student_names = output_names(student)
    teacher_names = student_names if teacher is None else output_names(teacher)
    distilled = distilled_names(student_names, teacher_names, distill_outputs)
    check_distill_weight_names(distill_weights, distilled, distill_features)
    if teacher is not None and distilled is not None:
        check_output_shapes(teacher, student, distilled)
    check_output_units(student, distance, distilled)
    return student_names, teacher_names, distilled


def check_distill_weight_names(distill_weights, distilled, features):
    """Raises `ValueError` if `distill_weights` names an output or feature
    that is not distilled (`distilled` is `None` while still unknown)."""
    if distill_weights is None or distilled is None:
        return
    known = [*distilled, *(features or [])]
    if set(distill_weights) - set(known):
        raise _checks.argument_error(
            "distill_weights",
            f"keys among the distilled outputs and features {known}",
            distill_weights,
        )


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


class FunctionLoss(keras.losses.Loss):
    """A loss function given by name or as a callable, as a Keras `Loss`."""

    def __init__(self, function):
        super().__init__(name="function_loss")
        self.function = function

    def call(self, y_true, y_pred):
        return self.function(y_true, y_pred)


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


def static_shapes(model):
    """Output shapes of a built model by output name, or `None` if unknown."""
    names = output_names(model)
    try:
        structure = model.output
    except (AttributeError, ValueError):
        # Subclassed models, and Sequential ones never called on a
        # symbolic input, have no symbolic outputs.
        return None
    shapes = [tuple(t.shape) for t in keras.tree.flatten(structure)]
    if isinstance(structure, dict):
        # `tree.flatten` sorts dict keys; names keep the model's order.
        shapes = [tuple(structure[name].shape) for name in names]
    return dict(zip(names, shapes, strict=True))


def check_output_shapes(teacher, student, distilled):
    """Raises `ValueError` if paired teacher and student outputs differ."""
    teacher_shapes = static_shapes(teacher)
    student_shapes = static_shapes(student)
    if teacher_shapes is None or student_shapes is None:
        # Subclassed models have no symbolic outputs: the distance checks
        # the shapes on the first batch instead.
        return
    if len(teacher_shapes) == 1 and len(student_shapes) == 1:
        teacher_shapes = list(teacher_shapes.values())
        student_shapes = list(student_shapes.values())
    else:
        teacher_shapes = [teacher_shapes[name] for name in distilled]
        student_shapes = [student_shapes[name] for name in distilled]
    if teacher_shapes != student_shapes:
        raise ValueError(
            "Invalid value for argument `teacher`. Expected a model whose "
            "outputs have the student's shapes. Received: teacher output "
            f"shapes {teacher_shapes}, student output shapes {student_shapes}"
        )


def check_output_units(student, distance, distilled):
    """Raises `ValueError` where `"normalized_mse"` meets a one-unit output.

    Standardised over its units, a one-unit output is always 0: the term
    would vanish without a word.
    """
    shapes = static_shapes(student)
    if distance != "normalized_mse" or shapes is None:
        return
    for name, shape in shapes.items():
        if (distilled is None or name in distilled) and shape[-1:] == (1,):
            raise ValueError(
                "Invalid value for argument `distance`. Expected 'mse', "
                "'squared_l2' or 'kl' for an output of one unit "
                "('normalized_mse' standardises over the units, so it is "
                "always 0 there). Received: distance='normalized_mse' with "
                f"output {name!r} of shape {shape}"
            )
