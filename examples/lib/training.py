"""Pretraining and fine-tuning a classifier, as the binaries do it.

Both check the data first (`keras_sft.check_dataset`), stop at once on a
non-finite loss (`keras_sft.TerminateOnNaN`) and save the trained
classifier whole or not at all. Under a multi-worker strategy every worker
trains and only the chief writes files (the trained model, the export,
checkpoints and logs; `keras_sft.BackupAndRestore` writes the backup from
the chief too), as `strategy.extended.should_checkpoint` says.
"""

import contextlib
import os
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import logging

import keras_sft
from examples.lib import classifiers
from examples.lib import saving
from keras_sft import data
from keras_sft.epoch_shuffle import EpochShuffle


def pretrain(
    *,
    model_name,
    train,
    validation,
    input_shape,
    num_classes,
    output,
    strategy,
    config,
    callbacks=(),
):
    """Trains a new classifier and saves it to `output`.

    Args:
        model_name: String, a name of `classifiers.MODELS`.
        train: Batched `tf.data.Dataset` of `(image, label)`.
        validation: Batched `tf.data.Dataset` of `(image, label)`, or `None`.
        input_shape: Tuple, the image shape.
        num_classes: Int, the number of classes.
        output: String, the `.keras` file the classifier goes to (from the
            chief alone, under a multi-worker strategy).
        strategy: `tf.distribute.Strategy`; the model and its optimizer are
            built in its scope.
        config: `TrainingConfig`; its `backup_dir` is not used.
        callbacks: Sequence of extra `keras.callbacks.Callback`s, run first
            (for example the `EpochShuffle` of `train`). Defaults to `()`.

    Returns:
        The trained `keras.Model`.
    """
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = classifiers.build_classifier(
            model_name,
            input_shape=input_shape,
            num_classes=num_classes,
            seed=config.seed,
        )
        _compile(
            model,
            config,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    _checked_fit(model, model, train, validation, config, callbacks)
    if strategy.extended.should_checkpoint:
        saving.save_atomically(model, output)
    return model


def finetune(
    *,
    pretrained,
    train,
    validation,
    lambda_,
    output,
    strategy,
    config,
    export_dir=None,
    export_preprocessing=None,
    overwrite=False,
    l2_sp_alpha=None,
    anchor_x=None,
    anchor_mode="replace",
    callbacks=(),
):
    """Fine-tunes a saved classifier with `keras_sft.SFTModel`.

    The teacher is a frozen clone of the pretrained model. With
    `config.backup_dir`, `keras_sft.BackupAndRestore` keeps a backup there
    (each `config.backup_freq`) and a rerun resumes from it. After
    training the student alone (a plain classifier) is saved to `output`
    and, with `export_dir`, exported as a SavedModel, by the chief alone
    under a multi-worker strategy.

    Args:
        pretrained: String, the pretrained `.keras` file.
        train: Batched `tf.data.Dataset` of `(image, label)`.
        validation: Batched `tf.data.Dataset` of `(image, label)`, or `None`.
        lambda_: Float >= 0, the weight of the consistency term; `0` is
            plain fine-tuning.
        output: String, the `.keras` file the fine-tuned student goes to.
        strategy: `tf.distribute.Strategy`; the student, the teacher and the
            optimizer are built in its scope.
        config: `TrainingConfig`.
        export_dir: String, where to export the SavedModel, or `None`.
            Defaults to `None`.
        export_preprocessing: Keras layer the export applies before the
            student (`keras_sft.export_saved_model`'s `preprocessing`),
            such as `keras_sft.data.rescaling(dataset)` so that clients
            send raw pixels, or `None`. Defaults to `None`.
        overwrite: Bool, whether to replace an existing `export_dir`.
            Defaults to `False`.
        l2_sp_alpha: Float >= 0, the strength of an L2-SP penalty towards
            the pretrained weights (`keras_sft.apply_l2_sp`), or `None` for
            none. Defaults to `None`.
        anchor_x: Numpy array of unlabeled inputs from the pretraining
            distribution, on which the consistency term is computed
            (`SFTModel.fit(anchor_x=...)`), or `None`. Defaults to `None`.
        anchor_mode: String, `"replace"` or `"both"`, as in
            `SFTModel.fit`. Defaults to `"replace"`.
        callbacks: As in `pretrain`. Defaults to `()`.

    Returns:
        The trained `keras_sft.SFTModel`.
    """
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        student = classifiers.load_classifier(pretrained)
        if l2_sp_alpha is not None:
            keras_sft.apply_l2_sp(student, l2_sp_alpha)
        model = keras_sft.SFTModel(
            student, lambda_=lambda_, distance=config.distance
        )
        _compile(model, config)
    anchors = {}
    if anchor_x is not None:
        anchors = {"anchor_x": anchor_x, "anchor_mode": anchor_mode}
    _checked_fit(
        model, student, train, validation, config, callbacks, **anchors
    )
    if not strategy.extended.should_checkpoint:
        return model
    saving.save_atomically(model.student, output)
    if export_dir:
        try:
            keras_sft.export_saved_model(
                model,
                export_dir,
                preprocessing=export_preprocessing,
                overwrite=overwrite,
            )
        except (OSError, tf.errors.OpError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise OSError(
                f"Cannot export the SavedModel to {export_dir!r} "
                f"({reason.strip().splitlines()[0]}); the previous export, "
                f"if any, is unchanged and the student is saved in {output!r}"
            ) from error
    return model


def finetune_splits(
    *,
    pretrained,
    train,
    test,
    dataset,
    cache=False,
    cache_dir=None,
    retained=None,
    **finetune_args,
):
    """`finetune` on unbatched splits of `dataset`, as `examples.finetune`
    runs it, logging where the student went.

    Args:
        pretrained: String, the pretrained `.keras` file.
        train: Unbatched `tf.data.Dataset` of `(image, label)`, batched and
            reshuffled each epoch by `shuffled_batches`.
        test: Unbatched `tf.data.Dataset` of `(image, label)` to validate
            on.
        dataset: String, the name of the dataset (`keras_sft.data.load`'s):
            the export scales raw pixels as `data.load` does, so clients
            send raw pixels.
        cache: Bool, whether to compute the teacher's outputs on `train`
            once, before training (`cache_teacher`). Defaults to `False`.
        cache_dir: String, where `cache` keeps the cache on disk, or `None`
            for memory. Defaults to `None`.
        retained: Unbatched `tf.data.Dataset` of `(image, label)` of the
            old task (the pretraining domain), or `None`: with one, each
            epoch's logs (progress bar, TensorBoard, history) carry
            `retained_accuracy` and `teacher_agreement` on it
            (`forgetting_monitor`). Defaults to `None`.
        **finetune_args: `finetune`'s other arguments (`lambda_`,
            `output`, `strategy` and `config` at least), but `train`,
            `validation`, `export_preprocessing` and `callbacks`.

    Returns:
        The trained `keras_sft.SFTModel`.
    """
    config = finetune_args["config"]
    strategy = finetune_args["strategy"]
    writes = strategy.extended.should_checkpoint
    with contextlib.ExitStack() as stack:
        if cache:
            if cache_dir and not writes:
                cache_dir = stack.enter_context(_worker_directory(cache_dir))
            train = cache_teacher(
                pretrained, train, strategy=strategy, directory=cache_dir
            )
        train, epoch_shuffle = shuffled_batches(
            train, seed=config.seed, batch_size=config.batch_size
        )
        monitors = []
        if retained is not None:
            monitors.append(forgetting_monitor(retained))
        model = finetune(
            pretrained=pretrained,
            train=train,
            validation=data.batch(test, batch_size=config.batch_size),
            export_preprocessing=data.rescaling(dataset),
            callbacks=[*monitors, epoch_shuffle],
            **finetune_args,
        )
    if not writes:
        logging.info(
            "Fine-tuned with lambda=%g; the chief writes the outputs",
            model.lambda_,
        )
        return model
    export_dir = finetune_args.get("export_dir")
    logging.info(
        "Fine-tuned with lambda=%g; student saved to %s",
        model.lambda_,
        finetune_args["output"],
    )
    if export_dir:
        logging.info(
            "SavedModel exported to %s (it takes raw pixels, 0..%g)",
            export_dir,
            data.max_intensity(dataset),
        )
    return model


def forgetting_monitor(retained, *, batch_size=256):
    """A `keras_sft.ForgettingMonitor` of the unbatched `(image, label)`
    dataset `retained`: put it first in `fit`'s callbacks, so that those
    after it (`BackupAndRestore`, `ModelCheckpoint`, `TensorBoard`,
    `EarlyStopping`) and the progress bar see `retained_accuracy` and
    `teacher_agreement`."""
    return keras_sft.ForgettingMonitor(
        data.batch(retained, batch_size=batch_size)
    )


def shuffled_batches(dataset, *, seed, batch_size):
    """`batch_size` batches of `dataset`, reshuffled each epoch in an order
    fixed by `seed` and the epoch number, so that a run resumed from a
    backup sees the batches of an uninterrupted run.

    Returns `(batches, epoch_shuffle)`; pass `epoch_shuffle` to `fit`.
    """
    epoch_shuffle = EpochShuffle(seed)
    return (
        data.batch(epoch_shuffle(dataset), batch_size=batch_size),
        epoch_shuffle,
    )


def cache_teacher(pretrained, dataset, *, strategy, directory=None):
    """`dataset` with the outputs of the teacher `finetune` will clone.

    The pretrained file loaded again is the frozen teacher that `SFTModel`
    clones: same weights, so the same outputs
    (`keras_sft.cache_teacher_outputs`).

    Under a strategy the examples get sample weights of 1, which change no
    loss: `tf.distribute` cannot split batches with a `None` part, the
    sample weight that `cache_teacher_outputs` stores where there is none.
    Under a multi-worker strategy each worker computes the whole cache with
    a teacher of its own, on one device: Keras's `predict` under the
    strategy would share the pass out among the workers.

    Args:
        pretrained: String, the pretrained `.keras` file.
        dataset: Unbatched, deterministic `tf.data.Dataset` of
            `(image, label)`.
        strategy: `tf.distribute.Strategy` to load the teacher under.
        directory: String, where to keep the cache on disk, or `None` for
            memory. Defaults to `None`.
    """
    if strategy is not tf.distribute.get_strategy():
        dataset = dataset.map(lambda x, y: (x, y, tf.constant(1.0)))
    scope = strategy.scope()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        scope = contextlib.nullcontext()
    with scope:
        teacher = classifiers.load_classifier(pretrained)
    return keras_sft.cache_teacher_outputs(
        teacher, dataset, directory=directory
    )


def _compile(model, config, **kwargs):
    """Compiles `model` with Adam and accuracy, as `config` says."""
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        metrics=["accuracy"],
        jit_compile=config.jit_compile,
        **kwargs,
    )


def _checked_fit(
    model, classifier, train, validation, config, callbacks, **anchors
):
    """Checks `train` against `classifier`, then fits `model` on it
    (`anchors`: `SFTModel.fit`'s anchor arguments, if any)."""
    keras_sft.check_dataset(train, classifier)
    callbacks = _callbacks(callbacks, config)
    if not model.distribute_strategy.extended.should_checkpoint:
        callbacks = [c for c in callbacks if not isinstance(c, _FILE_WRITERS)]
    model.fit(
        train,
        validation_data=validation,
        epochs=config.epochs,
        # The dataset is shuffled by the pipeline (with the seed).
        shuffle=False,
        callbacks=callbacks,
        verbose=config.verbose,
        **anchors,
    )


def _callbacks(extra, config):
    """The training callbacks of the binaries, in the order they must run.

    Under a multi-worker strategy every worker restores from the backup,
    which `keras_sft.BackupAndRestore` writes from the chief alone, and
    `_checked_fit` leaves out the `_FILE_WRITERS` but on the chief.
    """
    callbacks = [*extra, keras_sft.TerminateOnNaN()]
    if config.backup_dir:
        callbacks.append(
            keras_sft.BackupAndRestore(
                config.backup_dir, save_freq=config.backup_freq
            )
        )
    if config.checkpoint_dir:
        callbacks.append(
            _ModelCheckpoint(
                os.path.join(config.checkpoint_dir, "epoch_{epoch:03d}.keras")
            )
        )
    if config.log_dir:
        callbacks.append(keras.callbacks.TensorBoard(config.log_dir))
    return callbacks


@contextlib.contextmanager
def _worker_directory(directory):
    """A new directory beside `directory`, for a worker that is not the
    chief to write what the chief writes to `directory`; removed on
    leaving."""
    parent, name = os.path.split(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    own = tempfile.mkdtemp(
        prefix=f"{saving.temporary_prefix(name)}", dir=parent
    )
    try:
        yield own
    finally:
        shutil.rmtree(own, ignore_errors=True)


class _ModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` that saves the student of an `SFTModel`."""

    def set_model(self, model):
        super().set_model(getattr(model, "student", model))


# The callbacks that write files, which under a multi-worker strategy only
# the chief runs (the other workers would write the same paths).
_FILE_WRITERS = (keras.callbacks.ModelCheckpoint, keras.callbacks.TensorBoard)
