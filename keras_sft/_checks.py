"""Argument checks shared by the library, with one message form.

Every check raises `ValueError` worded as Keras words its own:
"Invalid value for argument `lambda_`. Expected a float >= 0. Received:
lambda_=-1".
"""

import math
import numbers

import keras

from keras_sft import _keras_compat
from keras_sft import distances


def argument_error(name, expected, value=None, *, received=None):
    """The `ValueError` for argument `name`: "Invalid value ... Received: ...".

    `received` replaces the default `name=value!r` where the message says
    more about the value than its repr.
    """
    if received is None:
        received = f"{name}={value!r}"
    return ValueError(
        f"Invalid value for argument `{name}`. Expected {expected}. "
        f"Received: {received}"
    )


def is_float_at_least(value, minimum):
    """Whether `value` is a finite real number (not a bool) >= `minimum`."""
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and value >= minimum
    )


def is_name_list(value):
    """Whether `value` is a list or tuple of distinct strings."""
    return (
        isinstance(value, (list, tuple))
        and all(isinstance(name, str) for name in value)
        and len(set(value)) == len(value)
    )


def check_model(name, value, *, allow_none=False):
    """Raises unless `value` is a `keras.Model` (or `None`, if allowed)."""
    if allow_none and value is None:
        return
    if not isinstance(value, keras.Model):
        expected = "a `keras.Model` instance" + (
            " or None" if allow_none else ""
        )
        raise argument_error(name, expected, value)


def check_int(name, value, *, minimum):
    """Raises unless `value` is an int (not a bool) >= `minimum`.

    The bound reads "> 0" for `minimum=1`, as Keras words positive ints.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        raise argument_error(name, f"an int {bound}", value)


def check_float(name, value, *, positive=False):
    """Raises unless `value` is a finite float >= 0 (> 0 if `positive`)."""
    if not is_float_at_least(value, 0) or (positive and value == 0):
        raise argument_error(
            name, f"a float {'>' if positive else '>='} 0", value
        )


def check_bool(name, value):
    """Raises unless `value` is a bool."""
    if not isinstance(value, bool):
        raise argument_error(name, "a bool", value)


def check_one_of(name, value, choices):
    """Raises unless `value` is one of `choices` (shown as a tuple)."""
    if value not in choices:
        raise argument_error(name, f"one of {tuple(choices)}", value)


def check_lambda(lambda_):
    """Raises unless `lambda_` is a float >= 0 or a schedule."""
    if isinstance(lambda_, numbers.Real) and not isinstance(lambda_, bool):
        check_float("lambda_", lambda_)
    elif not callable(lambda_):
        raise argument_error(
            "lambda_",
            "a float >= 0, or a schedule of the training step (a "
            "`keras.optimizers.schedules.LearningRateSchedule` or a "
            "callable)",
            lambda_,
        )


def check_distill_outputs(distill_outputs):
    """Raises unless `distill_outputs` is None or distinct output names."""
    if distill_outputs is not None and not is_name_list(distill_outputs):
        raise argument_error(
            "distill_outputs",
            "None or a list of distinct output names",
            distill_outputs,
        )


def check_distill_weights(distill_weights):
    """Raises unless `distill_weights` maps names to floats >= 0."""
    if distill_weights is None:
        return
    if not isinstance(distill_weights, dict) or not all(
        isinstance(name, str) and is_float_at_least(weight, 0)
        for name, weight in distill_weights.items()
    ):
        raise argument_error(
            "distill_weights",
            "None or a dict mapping output names to floats >= 0",
            distill_weights,
        )


def check_distill_features(distill_features, distance, distill_outputs):
    """Raises unless `distill_features` is usable with the other options."""
    if distill_features is None:
        if distill_outputs is not None and not distill_outputs:
            raise argument_error(
                "distill_outputs",
                "at least one output to keep close, or layers named in "
                "`distill_features`",
                distill_outputs,
            )
        return
    if not is_name_list(distill_features) or not distill_features:
        raise argument_error(
            "distill_features",
            "None or a non-empty list of distinct layer names",
            distill_features,
        )
    if distance == "kl":
        raise argument_error(
            "distill_features",
            "distance 'mse' or 'squared_l2': 'kl' compares class "
            "probabilities, not features",
            received=f"distill_features={distill_features!r} with "
            "distance='kl'",
        )


def check_logits_loss(student, loss):
    """Raises if `loss` reads logits (`from_logits=True`) but `student`'s
    single output applies a softmax: Keras would only warn, and the
    gradients of a softmax taken twice are small and wrong."""
    if not getattr(loss, "from_logits", False) or len(student.outputs) != 1:
        return
    layer = _keras_compat.output_layer(student)
    if isinstance(layer, keras.layers.Softmax) or (
        getattr(layer, "activation", None) is keras.activations.softmax
    ):
        raise argument_error(
            "loss",
            f"a loss on probabilities for a student whose output "
            f"{layer.name!r} applies a softmax: pass "
            f"`keras.losses.{type(loss).__name__}(from_logits=False)`, or "
            "give the student a linear output",
            received=f"loss={type(loss).__name__}(from_logits=True)",
        )


def check_sft_arguments(
    student,
    teacher,
    lambda_,
    distance,
    temperature,
    *,
    distill_outputs,
    distill_weights,
    distill_features,
    cache_teacher,
    guard_nonfinite,
):
    """Raises `ValueError` unless `SFTModel`'s arguments are valid alone
    (checks against the models' outputs come after)."""
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "SFTModel needs the TensorFlow backend (it trains under "
            "`tf.distribute`). Set KERAS_BACKEND=tensorflow. Received: "
            f"backend={keras.backend.backend()!r}"
        )
    check_model("student", student)
    check_model("teacher", teacher, allow_none=True)
    check_lambda(lambda_)
    check_one_of("distance", distance, distances.DISTANCES)
    check_float("temperature", temperature, positive=True)
    check_bool("cache_teacher", cache_teacher)
    check_bool("guard_nonfinite", guard_nonfinite)
    check_distill_outputs(distill_outputs)
    check_distill_weights(distill_weights)
    check_distill_features(distill_features, distance, distill_outputs)
