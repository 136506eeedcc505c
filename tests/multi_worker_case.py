"""The training run that the multi-worker test repeats on one process."""

import keras
import tensorflow as tf

import keras_sft
from tests import helpers

GLOBAL_BATCH_SIZE = 16


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
        model = keras_sft.SFTModel(student, teacher=teacher, lambda_=1.0)
        model.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.9))
    history = model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    logs = {key: values[-1] for key, values in history.history.items()}
    return model.student.get_weights(), logs
