"""The work behind the binaries: classifiers, pretraining, fine-tuning.

Each function takes plain arguments (no flags), so the binaries, the demo
and the tests share them.
"""

import os

import keras
import numpy as np

import keras_sft

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


def pretrain(
    *,
    model_name,
    train,
    validation,
    input_shape,
    num_classes,
    output,
    strategy,
    epochs,
    learning_rate=1e-3,
    seed=0,
    log_dir=None,
    jit_compile=False,
    checkpoint_every_epoch=True,
    verbose="auto",
):
    """Trains a new classifier and saves it to `output`.

    Args:
        model_name: String, a name of `MODELS`.
        train: Batched `tf.data.Dataset` of `(image, label)`.
        validation: Batched `tf.data.Dataset` of `(image, label)`, or `None`.
        input_shape: Tuple, the image shape.
        num_classes: Int, the number of classes.
        output: String, the `.keras` file the classifier goes to.
        strategy: `tf.distribute.Strategy`; the model and its optimizer are
            built in its scope.
        epochs: Int, the number of epochs.
        learning_rate: Float, Adam's learning rate. Defaults to `1e-3`.
        seed: Int, the seed of the weights and of Keras's randomness.
            Defaults to `0`.
        log_dir: String, the TensorBoard log directory, or `None`. Defaults
            to `None`.
        jit_compile: Bool, whether to compile the step with XLA. Defaults
            to `False`.
        checkpoint_every_epoch: Bool, whether `ModelCheckpoint` writes
            `output` after every epoch; if not, it is written once, after
            training. Defaults to `True`.
        verbose: As in `keras.Model.fit`. Defaults to `"auto"`.

    Returns:
        The trained `keras.Model`.
    """
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = build_classifier(
            model_name,
            input_shape=input_shape,
            num_classes=num_classes,
            seed=seed,
        )
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
    callbacks = []
    if checkpoint_every_epoch:
        callbacks.append(keras.callbacks.ModelCheckpoint(output))
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir))
    model.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        callbacks=callbacks,
        # The dataset is shuffled by the pipeline (with --seed).
        shuffle=False,
        verbose=verbose,
    )
    if not checkpoint_every_epoch:
        model.save(output)
    return model


def finetune(
    *,
    pretrained,
    train,
    validation,
    lambda_,
    output,
    strategy,
    epochs,
    learning_rate=1e-3,
    seed=0,
    backup_dir=None,
    export_dir=None,
    log_dir=None,
    jit_compile=False,
    checkpoint_every_epoch=True,
    verbose="auto",
):
    """Fine-tunes a saved classifier with `keras_sft.SFTModel`.

    The teacher is a frozen clone of the pretrained model. The student alone
    (a plain classifier) is saved to `output`, after each epoch by default
    (`ModelCheckpoint`); with `export_dir` it is exported as a SavedModel
    after training. With `backup_dir`, `keras.callbacks.BackupAndRestore`
    keeps a backup there at each epoch and resumes from it after a crash.

    Args:
        pretrained: String, the pretrained `.keras` file.
        train: Batched `tf.data.Dataset` of `(image, label)`.
        validation: Batched `tf.data.Dataset` of `(image, label)`, or `None`.
        lambda_: Float >= 0, the weight of the consistency term; `0` is
            plain fine-tuning.
        output: String, the `.keras` file the fine-tuned student goes to.
        strategy: `tf.distribute.Strategy`; the student, the teacher and the
            optimizer are built in its scope.
        epochs: Int, the number of epochs.
        learning_rate: Float, Adam's learning rate. Defaults to `1e-3`.
        seed: Int, the seed of Keras's randomness. Defaults to `0`.
        backup_dir: String, the `BackupAndRestore` directory, or `None`.
            Defaults to `None`.
        export_dir: String, where to export the SavedModel, or `None`.
            Defaults to `None`.
        log_dir: String, the TensorBoard log directory, or `None`. Defaults
            to `None`.
        jit_compile: Bool, whether to compile the step with XLA. Defaults
            to `False`.
        checkpoint_every_epoch: Bool, whether `ModelCheckpoint` writes
            `output` after every epoch; if not, it is written once, after
            training. Defaults to `True`.
        verbose: As in `keras.Model.fit`. Defaults to `"auto"`.

    Returns:
        The trained `keras_sft.SFTModel`.
    """
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        student = keras.models.load_model(pretrained, compile=False)
        model = keras_sft.SFTModel(student, lambda_=lambda_)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
    callbacks = []
    if checkpoint_every_epoch:
        callbacks.append(_StudentCheckpoint(output))
    if backup_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir))
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir))
    model.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        callbacks=callbacks,
        # The dataset is shuffled by the pipeline (with --seed).
        shuffle=False,
        verbose=verbose,
    )
    if not checkpoint_every_epoch:
        model.student.save(output)
    if export_dir:
        keras_sft.export_saved_model(model, export_dir)
    return model


class _StudentCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` that saves the student of the `SFTModel` trained."""

    def set_model(self, model):
        super().set_model(model.student)


def accuracy_by_group(model, dataset, groups=()):
    """Returns the accuracy of `model` overall and on each class group.

    Args:
        model: A `keras.Model` with logits output.
        dataset: Batched `tf.data.Dataset` of `(image, label)`, in a fixed
            order.
        groups: Sequence of sequences of class labels. Defaults to `()`.

    Returns:
        A dict: `"overall"`, then one key per group, `"0-4"` for classes
        0 to 4 (or `"0,2,7"` when not contiguous), to an accuracy in
        `[0, 1]` (`nan` for a group with no sample).
    """
    labels = np.concatenate([y for _, y in dataset.as_numpy_iterator()])
    predicted = np.argmax(model.predict(dataset, verbose=0), axis=-1)
    correct = predicted == labels
    accuracies = {"overall": float(np.mean(correct))}
    for group in groups:
        in_group = np.isin(labels, list(group))
        accuracies[group_name(group)] = (
            float(np.mean(correct[in_group])) if in_group.any() else np.nan
        )
    return accuracies


def group_name(group):
    """`"0-4"` for a contiguous run of classes, else `"0,2,7"`."""
    group = sorted(group)
    if len(group) > 1 and group == list(range(group[0], group[-1] + 1)):
        return f"{group[0]}-{group[-1]}"
    return ",".join(str(c) for c in group)


def ensure_parent(path):
    """Creates the parent directory of `path` if it does not exist."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
