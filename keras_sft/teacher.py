"""Frozen copies of pretrained models."""

import inspect
import os
import tempfile
import warnings

import keras

from keras_sft import _keras_compat


def clone_teacher(model):
    """Returns a frozen copy of `model` that predicts exactly as `model` does.

    The copy is made by Keras's own saving: `model` is saved to a `.keras`
    archive in a private temporary directory, which is removed afterwards,
    and loaded back. So the copy holds everything Keras saves: every weight,
    trainable or not (BatchNormalization statistics included), the state of
    adapted preprocessing layers (`Normalization`, `Discretization`,
    `StringLookup`, `IntegerLookup`, `TextVectorization`) with their
    vocabulary assets, nested models, and each layer's dtype policy. It has
    `trainable=False`, so no optimizer can change it, and shares no variable
    with `model`: later changes to `model` do not reach it.

    Sequential and Functional models, `keras.applications` models, keras-hub
    models and subclassed models that implement `get_config` can be copied;
    custom classes need not be registered with
    `keras.saving.register_keras_serializable`. A subclassed model that
    relies on Keras's automatic config while its `__init__` takes
    arguments is refused: Keras's config records the defaults of those
    arguments rather than the values the model was built with, so its copy
    could differ silently.

    Example:

    ```python
    pretrained = keras.models.load_model("pretrained.keras")
    teacher = keras_sft.clone_teacher(pretrained)
    ```

    Args:
        model: A built `keras.Model`.

    Returns:
        A `keras.Model` of the same class, with `trainable=False`.

    Raises:
        ValueError: if `model` is not a built `keras.Model`, or cannot be
            rebuilt from its config.
    """
    teacher = copy_model(model)
    teacher.trainable = False
    return teacher


def copy_model(model):
    """Returns a copy of `model`, state included, made by Keras's saving."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Invalid value for argument `model`. Expected a `keras.Model` "
            f"instance. Received: model={model!r}"
        )
    if not model.built:
        raise ValueError(
            "Invalid value for argument `model`. Expected a built model, so "
            "that its weights can be copied: call `model.build(input_shape)` "
            f"or call it on a batch first. Received: model={model.name!r} "
            "(not built)"
        )
    layers = _keras_compat.all_layers(model)
    try:
        _check_configs(layers)
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "model.keras")
            with warnings.catch_warnings():
                # The archive is read back below with `safe_mode=False`, so
                # the lambdas it holds (in a compiled loss, say) reload.
                warnings.filterwarnings(
                    "ignore", "The object being serialized includes a `lambda`"
                )
                model.save(path)
            # The archive is the one just written from `model`, so loading
            # the Python functions of its `Lambda` layers is safe.
            copy = keras.saving.load_model(
                path,
                custom_objects=_custom_classes(layers),
                compile=False,
                safe_mode=False,
            )
    except (NotImplementedError, TypeError, ValueError) as error:
        raise ValueError(
            "Invalid value for argument `model`. Expected a model that can "
            "be rebuilt from its config (implement `get_config`, or pass "
            f"`teacher=` explicitly). Received: model={model.name!r} "
            f"({type(model).__name__}: {error})"
        ) from error
    _share_lambda_functions(layers, _keras_compat.all_layers(copy))
    return copy


def _share_lambda_functions(layers, copied_layers):
    """Gives each copied `Lambda` layer the original's Python function.

    Keras saves a `Lambda` function as bytecode and reloads it without the
    globals of the module that defined it, so a function that calls
    `keras.ops` or a helper of its module fails in the copy with a
    `NameError`. A function holds no weights: the original computes what
    the copy should.
    """
    if len(layers) != len(copied_layers):
        return
    for layer, copied in zip(layers, copied_layers, strict=True):
        if isinstance(layer, keras.layers.Lambda) and isinstance(
            copied, keras.layers.Lambda
        ):
            copied.function = layer.function


def _check_configs(layers):
    """Raises `NotImplementedError` for a model Keras's config misdescribes."""
    for layer in layers:
        cls = type(layer)
        if not isinstance(layer, keras.Model) or (
            cls.get_config is not keras.Model.get_config
        ):
            continue
        # `keras.Model.__new__` drops the arguments given to `__init__`, so
        # the automatic config holds their defaults and a copy would be
        # built with those: a weight-shape error at best, a silently
        # different model at worst.
        parameters = list(inspect.signature(cls.__init__).parameters.values())
        arguments = [
            parameter.name
            for parameter in parameters[1:]
            if parameter.kind
            not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        ]
        if arguments:
            raise NotImplementedError(
                f"{cls.__name__} does not implement `get_config`, and Keras's "
                "automatic config of a subclassed model does not record the "
                f"values of its `__init__` arguments {arguments}"
            )


def _custom_classes(layers):
    """Maps names to the classes of `layers` that Keras does not define."""
    # Keras finds its own classes and registered ones by name; the others
    # would fail to load ("Could not locate class").
    return {
        type(layer).__name__: type(layer)
        for layer in layers
        if not type(layer).__module__.startswith("keras.")
    }


# The precisions `SFTModel(teacher_dtype=...)` runs a teacher in, beside
# `None` (the teacher's own).
TEACHER_DTYPES = ("bfloat16", "float16")


def cast_teacher(teacher, dtype, *, shared_weights=()):
    """Makes the frozen `teacher` compute in `dtype`, and store its own
    floating weights in it, in place.

    Each layer gets the mixed policy of `dtype` (computations in `dtype`,
    variables read in it), and each floating weight the teacher owns is
    replaced by a copy in `dtype`: half the memory of float32. Weights in
    `shared_weights` (the student's variables that a shared teacher
    reads) stay as they are, read in `dtype` at each call.
    `BatchNormalization` computes in float32 whatever its policy, as Keras
    makes it.

    Args:
        teacher: A built, frozen `keras.Model`.
        dtype: String, one of `TEACHER_DTYPES`.
        shared_weights: The variables to leave in place. Defaults to `()`.
    """
    policy = keras.DTypePolicy(f"mixed_{dtype}")
    shared = {id(w) for w in shared_weights}
    for layer in _keras_compat.all_layers(teacher):
        layer.dtype_policy = policy
        for weights in _keras_compat.own_weights(layer):
            for weight in list(weights):
                if id(weight) in shared or not _is_float(weight.dtype):
                    continue
                copy = keras.Variable(
                    keras.ops.cast(weight, dtype),
                    dtype=dtype,
                    trainable=False,
                    name=weight.name,
                )
                _keras_compat.replace_weight(layer, weight, copy)


def _is_float(dtype):
    """Whether `dtype` is a floating dtype."""
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(dtype))
