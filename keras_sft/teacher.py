"""Frozen copies of pretrained models."""

import keras


def clone_teacher(model):
    """Returns a frozen copy of `model` with bit-identical weights.

    The copy is a new model built from `model`'s config (Sequential,
    Functional, or a subclassed model that implements `get_config`), with
    every weight, trainable or not (BatchNormalization statistics included),
    copied from `model`, and `trainable=False`, so no optimizer can change
    it. Later changes to `model` do not reach the copy.

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
    """Returns a new model with `model`'s config and bit-identical weights."""
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
    try:
        copy = keras.models.clone_model(model)
    except (NotImplementedError, TypeError) as error:
        raise ValueError(
            "Invalid value for argument `model`. Expected a model that can "
            "be rebuilt from its config (implement `get_config`, or pass "
            f"`teacher=` explicitly). Received: model={model.name!r} "
            f"({type(model).__name__}: {error})"
        ) from error
    copy.set_weights(model.get_weights())
    return copy
