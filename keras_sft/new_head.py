"""add_head: a new head for new classes, as in Learning without Forgetting."""

import keras

from keras_sft import _checks


def add_head(model, num_classes, *, name="new_head", feature_layer=None):
    """Returns `model` with a second output: a new head for new classes.

    Learning without Forgetting learns new classes with a new head on the
    pretrained features, while the consistency term keeps the old head's
    outputs close to the pretrained model's. The returned Functional model
    shares every layer (and weight) of `model`; its outputs are
    `[model's output, new head logits]`, named by the layers that make
    them, so `SFTModel(student, distill_outputs=[old_name])` keeps the old
    head close to the teacher while `compile(loss={name: ...})` trains the
    new head alone.

    Example:

    ```python
    student = add_head(pretrained, num_classes=5)
    old_head = student.output_names[0]
    model = SFTModel(student, lambda_=1.0, distill_outputs=[old_head])
    model.compile(
        optimizer="adam",
        loss={"new_head": keras.losses.SparseCategoricalCrossentropy(
            from_logits=True)},
    )
    model.fit(new_x, {"new_head": new_y})
    ```

    Args:
        model: A built single-output Functional or Sequential `keras.Model`.
        num_classes: Int > 0, the number of new classes.
        name: String, the new head's layer (and output) name. Defaults to
            `"new_head"`.
        feature_layer: String, the layer whose output feeds the new head, or
            `None` for the input of the last layer (the penultimate
            features). Defaults to `None`.

    Returns:
        A two-output Functional `keras.Model`.

    Reference:
        Li & Hoiem, "Learning without Forgetting", TPAMI 2017
        (https://arxiv.org/abs/1606.09282).
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(
            "Invalid value for argument `model`. Expected a built "
            f"`keras.Model`. Received: model={model!r}"
        )
    _checks.check_int("num_classes", num_classes, minimum=1)
    try:
        (inputs,) = model.inputs
        (old_output,) = model.outputs
        if feature_layer is None:
            features = model.layers[-1].input
        else:
            features = model.get_layer(feature_layer).output
    except (ValueError, AttributeError, TypeError) as error:
        raise ValueError(
            "Invalid value for argument `model`. Expected a single-input, "
            "single-output Functional or Sequential model"
            + (
                ""
                if feature_layer is None
                else f" with a layer {feature_layer!r}"
            )
            + f". Received: model={model.name!r} ({error})"
        ) from error
    if name in [layer.name for layer in model.layers]:
        raise ValueError(
            "Invalid value for argument `name`. Expected a name that no layer "
            f"of `model` has. Received: name={name!r}"
        )
    new_output = keras.layers.Dense(num_classes, name=name, dtype="float32")(
        features
    )
    return keras.Model(
        inputs, [old_output, new_output], name=f"{model.name}_heads"
    )
