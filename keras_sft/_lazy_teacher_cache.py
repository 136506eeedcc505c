"""Private: teacher outputs stored as the first epoch computes them."""

import math

import keras
import tensorflow as tf


class LazyTeacherCache:
    """A buffer of the teacher's outputs, one row per example, filled by
    the steps that first meet each example.

    The live teacher runs in the first epoch anyway; storing its outputs
    then costs a scatter per step and no separate pass (no `predict`, no
    extra tracing), and every later epoch reads them back. So where the
    cache is used it is never slower than the live teacher by more than the
    scatter, and it saves the teacher's forward pass from the second epoch.

    The buffers are variables of unknown length, made once per model and
    resized at each `fit`, so the traced train function that captures them
    stays valid from one `fit` call to the next. They are plain
    `tf.Variable`s held outside Keras's tracking: neither weights nor
    saved state.

    Args:
        teacher: the frozen teacher, whose outputs the buffers hold.
        spec: the structure of `KerasTensor`s of its outputs, with fully
            known shapes after the batch axis.
    """

    def __init__(self, teacher, spec):
        self.teacher = teacher
        self._outputs = keras.tree.map_structure(
            lambda s: tf.Variable(
                tf.zeros((0, *s.shape[1:]), s.dtype),
                shape=tf.TensorShape([None, *s.shape[1:]]),
                trainable=False,
            ),
            spec,
        )
        self._filled = tf.Variable(
            tf.zeros((0,), tf.bool),
            shape=tf.TensorShape([None]),
            trainable=False,
        )

    def reset(self, size):
        """Empties the buffers and gives them `size` rows."""
        for variable in keras.tree.flatten(self._outputs):
            variable.assign(
                tf.zeros((size, *variable.shape[1:]), variable.dtype)
            )
        self._filled.assign(tf.zeros((size,), tf.bool))

    def outputs(self, x, index):
        """The teacher's outputs on the batch `x` of examples `index`."""

        def read():
            return keras.tree.map_structure(
                lambda variable: tf.gather(variable, index), self._outputs
            )

        def compute():
            outputs = self.teacher(x, training=False)
            for variable, value in zip(
                keras.tree.flatten(self._outputs),
                keras.tree.flatten(outputs),
                strict=True,
            ):
                variable.scatter_update(tf.IndexedSlices(value, index))
            self._filled.scatter_update(
                tf.IndexedSlices(tf.ones_like(index, tf.bool), index)
            )
            return keras.tree.map_structure(tf.identity, outputs)

        return tf.cond(
            tf.reduce_all(tf.gather(self._filled, index)), read, compute
        )


def buffer_spec(teacher, x):
    """The `KerasTensor`s of the teacher's outputs on `x`, or `None` where
    they cannot be buffered (unknown per-example shapes)."""
    try:
        spec = teacher.compute_output_spec(
            keras.tree.map_structure(
                lambda a: keras.KerasTensor(
                    (None, *a.shape[1:]), dtype=tf.as_dtype(a.dtype).name
                ),
                x,
            )
        )
    except Exception:  # noqa: BLE001 - any failure: keep the live teacher
        return None
    if any(None in s.shape[1:] for s in keras.tree.flatten(spec)):
        return None
    return spec


def bytes_per_example(spec):
    """Bytes of one example's outputs in `spec`."""
    return sum(
        math.prod(s.shape[1:]) * tf.as_dtype(s.dtype).size
        for s in keras.tree.flatten(spec)
    )
