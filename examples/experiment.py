"""The work behind the binaries: classifiers, pretraining, fine-tuning.

Each function takes plain arguments (no flags), so the binaries, the demo
and the tests share them.
"""

import os
import tempfile

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
    checkpoint_dir=None,
    jit_compile=False,
    callbacks=(),
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
        checkpoint_dir: String, where `ModelCheckpoint` writes the model
            after each epoch, or `None`. Defaults to `None`.
        jit_compile: Bool, whether to compile the step with XLA. Defaults
            to `False`.
        callbacks: Sequence of extra `keras.callbacks.Callback`s, run first
            (for example the `EpochShuffle` of `train`). Defaults to `()`.
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
    _checked_fit(
        model,
        model,
        train,
        validation=validation,
        epochs=epochs,
        callbacks=_callbacks(
            callbacks, checkpoint_dir=checkpoint_dir, log_dir=log_dir
        ),
        verbose=verbose,
    )
    save_atomically(model, output)
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
    checkpoint_dir=None,
    export_dir=None,
    overwrite=False,
    log_dir=None,
    jit_compile=False,
    l2_sp_alpha=None,
    callbacks=(),
    verbose="auto",
):
    """Fine-tunes a saved classifier with `keras_sft.SFTModel`.

    The teacher is a frozen clone of the pretrained model. The training data
    is checked first (`keras_sft.check_dataset`), and a non-finite loss
    stops training at once (`keras_sft.TerminateOnNaN`). With `backup_dir`,
    `keras.callbacks.BackupAndRestore` keeps a backup there at the end of
    each epoch and a rerun resumes from it. After training the student
    alone (a plain classifier) is saved to `output`, atomically, and with
    `export_dir` exported as a SavedModel.

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
        checkpoint_dir: String, where `ModelCheckpoint` writes the student
            after each epoch, or `None`. Defaults to `None`.
        export_dir: String, where to export the SavedModel, or `None`.
            Defaults to `None`.
        overwrite: Bool, whether to replace an existing `export_dir`.
            Defaults to `False`.
        log_dir: String, the TensorBoard log directory, or `None`. Defaults
            to `None`.
        jit_compile: Bool, whether to compile the step with XLA. Defaults
            to `False`.
        l2_sp_alpha: Float >= 0, the strength of an L2-SP penalty towards
            the pretrained weights (`keras_sft.apply_l2_sp`), or `None` for
            none. Defaults to `None`.
        callbacks: Sequence of extra `keras.callbacks.Callback`s, run first
            (for example the `EpochShuffle` of `train`). Defaults to `()`.
        verbose: As in `keras.Model.fit`. Defaults to `"auto"`.

    Returns:
        The trained `keras_sft.SFTModel`.
    """
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        student = load_classifier(pretrained)
        if l2_sp_alpha is not None:
            keras_sft.apply_l2_sp(student, l2_sp_alpha)
        model = keras_sft.SFTModel(student, lambda_=lambda_)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
    _checked_fit(
        model,
        student,
        train,
        validation=validation,
        epochs=epochs,
        callbacks=_callbacks(
            callbacks,
            backup_dir=backup_dir,
            checkpoint_dir=checkpoint_dir,
            log_dir=log_dir,
        ),
        verbose=verbose,
    )
    save_atomically(model.student, output)
    if export_dir:
        keras_sft.export_saved_model(model, export_dir, overwrite=overwrite)
    return model


def _checked_fit(model, classifier, train, *, validation, epochs, **kwargs):
    """Checks `train` against `classifier`, then fits `model` on it."""
    keras_sft.check_dataset(train, classifier)
    model.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        # The dataset is shuffled by the pipeline (with --seed).
        shuffle=False,
        **kwargs,
    )


def _callbacks(extra, *, backup_dir=None, checkpoint_dir=None, log_dir=None):
    """The training callbacks of the binaries, in the order they must run."""
    callbacks = [*extra, keras_sft.TerminateOnNaN()]
    if backup_dir:
        # Two copies, so a crash while one is written leaves the other.
        callbacks.append(
            keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True)
        )
    if checkpoint_dir:
        callbacks.append(
            _ModelCheckpoint(
                os.path.join(checkpoint_dir, "epoch_{epoch:03d}.keras")
            )
        )
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir))
    return callbacks


class _ModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` that saves the student of an `SFTModel`."""

    def set_model(self, model):
        super().set_model(getattr(model, "student", model))


def load_classifier(path):
    """Loads a `.keras` classifier (an `SFTModel` gives its student).

    Raises:
        ValueError: one line naming the file and the fix, if the file is
            missing, truncated or not a Keras model.
    """
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises a dozen types for bad files.
        reason = str(error).strip().splitlines()[0] if str(error) else ""
        raise ValueError(
            f"Cannot load a Keras model from {path!r} "
            f"({type(error).__name__}: {reason}); pass a .keras file written "
            "by model.save(), such as the output of examples.pretrain"
        ) from error
    return getattr(model, "student", model)


def save_atomically(model, path):
    """Saves `model` to the `.keras` file `path`, whole or not at all.

    The model is written to a temporary file beside `path`, then renamed
    over it: a crash midway leaves the previous file (or none), never a
    truncated one.
    """
    ensure_parent(path)
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, staging = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.tmp-", suffix=".keras", dir=directory
    )
    os.close(descriptor)
    try:
        model.save(staging)
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise


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


def finish_lambda_plot(figure, axes, lambdas, *, ylabel, title, path):
    """Puts `lambdas` on a symlog axis (0 included), labels, saves to `path`."""
    # Symmetric log scale: lambda=0 (plain fine-tuning) sits at 0.
    linthresh = min((value for value in lambdas if value > 0), default=1.0)
    axes.set_xscale("symlog", linthresh=linthresh)
    axes.set_xlim(left=-0.2 * linthresh)
    axes.set_xlabel("lambda (0 = plain fine-tuning)")
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 100)
    axes.legend(loc="lower left", fontsize="small")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
