"""Private: models that return a model's outputs with inner layers' outputs.

`SFTModel(distill_features=[...])` keeps named layers of the student close
to the same layers of the teacher; each model is then called through an
extractor sharing its layers and returning `(outputs, {name: feature})`.
"""

import keras
from keras import ops

from keras_sft import _checks


def extractors(teacher, student, names):
    """`(teacher_extractor, student_extractor)`, `(None, None)` without
    `names`; raises `ValueError` if paired features differ in shape."""
    if names is None:
        return None, None
    student_extractor = feature_extractor(student, names, "student")
    teacher_extractor = feature_extractor(teacher, names, "teacher")
    check_feature_shapes(teacher_extractor, student_extractor)
    return teacher_extractor, student_extractor


def feature_extractor(model, names, role):
    """A model sharing `model`'s layers that returns `(outputs, features)`.

    `None` when `names` is `None`. `role` ("student" or "teacher") names
    the model in the error raised for unknown layers.
    """
    if names is None:
        return None
    try:
        features = {name: model.get_layer(name).output for name in names}
        return keras.Model(
            _symbolic(model, "input"), (_symbolic(model, "output"), features)
        )
    except (ValueError, AttributeError) as error:
        raise _checks.argument_error(
            "distill_features",
            f"names of layers of the {role}, a built Functional or "
            "Sequential model",
            received=f"distill_features={names!r} ({error})",
        ) from error


def _symbolic(model, kind):
    """`model.input` or `model.output` (`kind`), Sequential models included."""
    try:
        return getattr(model, kind)
    except AttributeError:
        # A Sequential model that was built but never called has only the
        # plural attribute, with one tensor.
        (tensor,) = getattr(model, f"{kind}s")
        return tensor


def check_feature_shapes(teacher_extractor, student_extractor):
    """Raises `ValueError` if paired teacher and student features differ."""
    teacher = teacher_extractor.output[1]
    student = student_extractor.output[1]
    for name, feature in student.items():
        if tuple(feature.shape) != tuple(teacher[name].shape):
            raise _checks.argument_error(
                "distill_features",
                "teacher and student features of the same shape",
                received=f"layer {name!r} gives "
                f"{tuple(teacher[name].shape)} in the teacher and "
                f"{tuple(feature.shape)} in the student",
            )


def teacher_forward(teacher, extractor, x, cached=None):
    """Teacher `(outputs, features)`, without gradient; `cached` outputs
    (from `teacher_cache`) replace the teacher's pass."""
    if extractor is None:
        if cached is None:
            cached = teacher(x, training=False)
        predictions, features = cached, {}
    elif cached is not None:
        raise ValueError(
            "Cached teacher outputs hold no intermediate features: with "
            "`distill_features`, train on the plain dataset (the "
            "teacher runs live)"
        )
    else:
        predictions, features = extractor(x, training=False)
    return keras.tree.map_structure(ops.stop_gradient, (predictions, features))


def student_forward(student, extractor, x, training):
    """Student `(outputs, features)`, features by `distill_features` name."""
    if extractor is None:
        return student(x, training=training), {}
    return extractor(x, training=training)
