"""Private: how `SFTModel` names its models' outputs, and the checks of
the options that name them.

A student may return one tensor of any rank, a list or a dict of outputs.
`output_names` names each output as `keras.Model.compile` does (dict keys,
or the layers that make list outputs); `resolve` checks, when the model is
made, that `distill_outputs`, `distill_weights` and the teacher's output
shapes fit those outputs. How the loss pairs and weighs
the outputs at each step is `_sft_loss`'s.
"""

import keras

from keras_sft import _checks
from keras_sft import _sft_loss


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


def resolve(student, teacher, distill):
    """`(student_names, teacher_names, distilled)` of an `SFTModel`'s models.

    `distill` is `(distill_outputs, distill_weights, distill_features)`;
    raises `ValueError` where they or the teacher's output shapes do not
    fit the models' outputs.
    """
    distill_outputs, distill_weights, distill_features = distill
    student_names = output_names(student)
    teacher_names = student_names if teacher is None else output_names(teacher)
    distilled = _sft_loss.distilled_names(
        student_names, teacher_names, distill_outputs
    )
    check_distill_weight_names(distill_weights, distilled, distill_features)
    if teacher is not None and distilled is not None:
        check_output_shapes(teacher, student, distilled)
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
