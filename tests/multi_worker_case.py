"""The training runs that the multi-worker test repeats on one process."""

import os
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

import keras_sft
from tests import helpers

GLOBAL_BATCH_SIZE = 16
# The runs of `CASES` after `train`, each `(strategy, directory) -> dict of
# arrays`, in the order a worker runs them: the step guard's refusal last,
# as it aborts the collectives of its process.
CASES = ("anchors", "cache_teacher", "backup", "step_guard")
# What these runs compare is the strategy, not the distance.
_DISTANCE = "mse"


def train(strategy):
    """Student weights and epoch logs after one epoch under `strategy`."""
    keras.utils.set_random_seed(0)
    x, y, weights = helpers.classification_data(n=48)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(
        GLOBAL_BATCH_SIZE
    )
    with strategy.scope():
        student = helpers.mlp()
        teacher = helpers.perturbed_copy(student)
        model = keras_sft.SFTModel(
            student, teacher=teacher, lambda_=1.0, distance=_DISTANCE
        )
        model.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.9))
    history = model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    logs = {key: values[-1] for key, values in history.history.items()}
    return model.student.get_weights(), logs


def _model(strategy, **options):
    """A fresh `SFTModel` with a perturbed teacher, built and compiled in
    `strategy`'s scope."""
    keras.utils.set_random_seed(0)
    with strategy.scope():
        student = helpers.mlp()
        teacher = helpers.perturbed_copy(student)
        model = keras_sft.SFTModel(
            student, teacher=teacher, lambda_=1.0, distance=_DISTANCE, **options
        )
        model.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.9))
    return model


def _weights(model):
    return {f"weight_{i}": w for i, w in enumerate(model.student.get_weights())}


def anchors(strategy, directory):
    """Two epochs with the consistency term on array anchors as well."""
    model = _model(strategy)
    x, y, weights = helpers.classification_data(n=48)
    anchor_x, _, _ = helpers.classification_data(n=GLOBAL_BATCH_SIZE, seed=1)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(
        GLOBAL_BATCH_SIZE
    )
    model.fit(
        dataset,
        epochs=2,
        shuffle=False,
        verbose=0,
        anchor_x=anchor_x,
        anchor_mode="both",
    )
    return _weights(model)


def cache_teacher(strategy, directory):
    """Three epochs on arrays with `cache_teacher=True`, which caches the
    teacher's outputs on one process (from three epochs on one device)."""
    model = _model(strategy, cache_teacher=True)
    x, y, weights = helpers.classification_data(n=48)
    model.fit(
        x,
        y,
        sample_weight=weights,
        batch_size=GLOBAL_BATCH_SIZE,
        epochs=3,
        shuffle=False,
        verbose=0,
    )
    return _weights(model)


def backup(strategy, directory):
    """One epoch with a `BackupAndRestore` in `directory`, then a second
    `fit` to two epochs that resumes from it. Also returns how many
    backups this process wrote and the epochs the second `fit` ran."""
    model = _model(strategy)
    x, y, weights = helpers.classification_data(n=48)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(
        GLOBAL_BATCH_SIZE
    )
    backup_dir = os.path.join(directory, "backup")
    save_weights = keras.Model.save_weights
    with mock.patch.object(
        keras.Model, "save_weights", autospec=True, side_effect=save_weights
    ) as spy:
        model.fit(
            dataset,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[
                keras_sft.BackupAndRestore(backup_dir, delete_checkpoint=False)
            ],
        )
    resumed = _model(strategy)
    history = resumed.fit(
        dataset,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[keras_sft.BackupAndRestore(backup_dir)],
    )
    return {
        **_weights(resumed),
        "writes": np.array(spy.call_count),
        "epochs_run": np.array(len(history.history["loss"])),
    }


def step_guard(strategy, directory):
    """One epoch whose second batch holds a NaN input (in the half of the
    batch that the second of two workers reads): the message of the
    `NonFiniteLossError` it stops with."""
    model = _model(strategy)
    x, y, weights = helpers.classification_data(n=48)
    x[GLOBAL_BATCH_SIZE + GLOBAL_BATCH_SIZE - 2, 0] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(
        GLOBAL_BATCH_SIZE
    )
    try:
        model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    except RuntimeError as error:
        assert type(error).__name__ == "NonFiniteLossError", error
        return {"message": np.array(str(error))}
    return {"message": np.array("no error")}
