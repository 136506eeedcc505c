"""Does one epoch under MirroredStrategy equal one epoch on one device?

Trains the same tiny classifier, from the same weights, on the same global
batches, once on one device and once mirrored over two logical CPU devices,
with `keras_sft.SFTModel` and with `keras.distillation.Distiller` (MSE on the
outputs), and prints how far the two runs' weights end up apart compared
with the size of the update itself. A correct loss scaling gives a gap at
float32 round-off.

    python -m benchmarks.mirrored_equivalence
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_sft  # noqa: E402
from benchmarks import report  # noqa: E402


def _models(seed=0):
    """A student MLP and a teacher whose weights differ from it."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(
        8, "relu", kernel_initializer=keras.initializers.GlorotUniform(seed)
    )(inputs)
    outputs = keras.layers.Dense(
        3, kernel_initializer=keras.initializers.GlorotUniform(seed + 1)
    )(hidden)
    student = keras.Model(inputs, outputs)
    teacher = keras.models.clone_model(student)
    rng = np.random.default_rng(seed)
    teacher.set_weights(
        [w + 0.3 * rng.normal(size=w.shape) for w in student.get_weights()]
    )
    return student, teacher


def _one_epoch(strategy, kind, x, y):
    """Student weights before and after one epoch of `kind` under strategy."""
    with strategy.scope():
        student, teacher = _models()
        initial = student.get_weights()
        task_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if kind == "Distiller":
            model = keras.distillation.Distiller(
                teacher=teacher,
                student=student,
                distillation_losses=keras.distillation.FeatureDistillation(
                    loss="mse"
                ),
                student_loss_weight=0.5,
            )
            model.compile(optimizer=keras.optimizers.SGD(0.2), loss=task_loss)
        else:
            model = keras_sft.SFTModel(student, teacher=teacher, lambda_=1.0)
            model.compile(optimizer=keras.optimizers.SGD(0.2), loss=task_loss)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return initial, student.get_weights()


def _mirrored(index):
    """The `index`-th `MirroredStrategy` of this process, over two logical
    CPU devices.

    Each strategy numbers its collectives from its class's key base, so the
    second one in a process would reuse the first's keys, meet its tensors
    and abort ("Shape mismatch in the collective instance"). TensorFlow's
    own tests move the base, as here.
    """
    tf.distribute.MirroredStrategy._collective_key_base = 100_000 * index
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def main():
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )
    print(report.machine(), flush=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = rng.integers(0, 3, size=48)
    print("| model | max abs weight gap, 2 replicas vs 1 | max abs update |")
    print("| --- | --- | --- |")
    for index, kind in enumerate(("SFTModel", "Distiller"), start=1):
        initial, one = _one_epoch(
            tf.distribute.OneDeviceStrategy("/cpu:0"), kind, x, y
        )
        _, two = _one_epoch(_mirrored(index), kind, x, y)
        gap = max(np.abs(a - b).max() for a, b in zip(one, two, strict=True))
        update = max(
            np.abs(a - b).max() for a, b in zip(one, initial, strict=True)
        )
        print(f"| {kind} | {gap:.2g} | {update:.2g} |")


if __name__ == "__main__":
    main()
