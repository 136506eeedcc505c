"""The small classifiers of the examples: building and loading them."""

import keras

from keras_sft import _model_files

MODELS = ("mlp", "cnn")


def build_classifier(name, *, input_shape, num_classes, seed=0):
    """Returns a small classifier with logits output.

    Args:
        name: String, `"mlp"` (flatten, one hidden layer of 128 ReLU units)
            or `"cnn"` (two 3x3 convolutions, global average pooling).
        input_shape: Tuple `(height, width, channels)`.
        num_classes: Int, the number of logits.
        seed: Int, the seed of the weight initializers. Defaults to `0`.

    Returns:
        A Functional `keras.Model`.
    """
    if name not in MODELS:
        raise ValueError(
            "Invalid value for argument `name`. Expected one of "
            f"{MODELS}. Received: name={name!r}"
        )
    init = keras.initializers.GlorotUniform
    inputs = keras.Input(input_shape, name="image")
    if name == "mlp":
        hidden = keras.layers.Flatten()(inputs)
        hidden = keras.layers.Dense(
            128, activation="relu", kernel_initializer=init(seed)
        )(hidden)
    else:
        hidden = keras.layers.Conv2D(
            16,
            3,
            padding="same",
            activation="relu",
            kernel_initializer=init(seed),
        )(inputs)
        hidden = keras.layers.Conv2D(
            32,
            3,
            padding="same",
            activation="relu",
            kernel_initializer=init(seed + 1),
        )(hidden)
        hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    # Logits in float32 under mixed precision: softmax cross-entropy and
    # the distances need the range.
    outputs = keras.layers.Dense(
        num_classes, kernel_initializer=init(seed + 2), dtype="float32"
    )(hidden)
    return keras.Model(inputs, outputs, name=name)


def load_classifier(path):
    """Loads a `.keras` classifier (an `SFTModel` gives its student).

    Raises:
        ValueError: one line naming the file and the fix, if the file is
            missing, truncated or not a Keras model.
    """
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises a dozen types for bad files.
        # Keras says "File not found" for a truncated file that is there.
        reason = _model_files.damage(path)
        if reason is None:
            reason = str(error).strip().splitlines()[0] if str(error) else ""
            reason = f"{type(error).__name__}: {reason}"
        raise ValueError(
            f"Cannot load a Keras model from {path!r} ({reason}); pass a "
            ".keras file written by model.save(), such as the output of "
            "examples.pretrain"
        ) from error
    return getattr(model, "student", model)
