"""Private: when `SFTModel.fit` caches the teacher's outputs on arrays.

Given arrays and two or more epochs, `fit` runs the teacher once, in one
`predict` pass, and packs its outputs beside the inputs with
`teacher_cache.pack`; the steps read them back with `teacher_cache.unpack`.
"""

import inspect
import math

import keras
import tensorflow as tf

from keras_sft import keras_compat
from keras_sft import teacher_cache

# `SFTModel.fit` takes `keras.Model.fit`'s arguments by position or name.
FIT_SIGNATURE = inspect.signature(keras.Model.fit)


def with_cached_teacher(model, arguments):
    """`fit`'s `arguments`, with teacher outputs packed where they pay."""
    if not caches_teacher(model, arguments):
        return arguments
    arguments = dict(arguments)
    batch_size = arguments.get("batch_size")
    arguments["x"] = _with_teacher_outputs(
        model.teacher, arguments["x"], batch_size
    )
    validation = arguments.get("validation_data")
    if (
        isinstance(validation, (tuple, list))
        and len(validation) in (2, 3)
        and same_length_arrays(*validation[:2])
    ):
        inputs = _with_teacher_outputs(
            model.teacher,
            validation[0],
            arguments.get("validation_batch_size") or batch_size,
        )
        arguments["validation_data"] = (inputs, *validation[1:])
    return arguments


def caches_teacher(model, arguments):
    """Whether `model.fit(**arguments)` trains on cached teacher outputs."""
    x, y = arguments.get("x"), arguments.get("y")
    epochs = arguments.get("epochs", 1) - arguments.get("initial_epoch", 0)
    return (
        model.cache_teacher
        # One epoch reads each example once: the pass would only add
        # `predict`'s overhead to the live teacher's work.
        and epochs >= 2
        # Unequal lengths too are left to Keras, whose error names `x`
        # and `y`.
        and same_length_arrays(x, y)
        # Cached outputs hold no intermediate features.
        and model.distill_features is None
        and model.lambda_ != 0.0
        and not keras_compat.in_multi_worker_mode(model.distribute_strategy)
        and outputs_fit_beside(model.teacher, x)
    )


def same_length_arrays(*parts):
    """Whether `parts` are NumPy arrays or tensors (or structures of them)
    with one number of examples: data that `fit` reads as arrays, the same
    every epoch."""
    lengths = teacher_cache.array_lengths(parts)
    return (
        all(part is not None for part in parts)
        and bool(lengths)
        and len(set(lengths)) == 1
    )


def outputs_fit_beside(teacher, x):
    """Whether the teacher's outputs on `x` take no more memory than `x`.

    Classifier outputs are a small fraction of their inputs; dense
    outputs with many classes (per-pixel logits) can be several times
    larger, and there the live teacher, which needs no memory per
    example, is the safer default.
    """
    leaves = keras.tree.flatten(x)
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
        return False
    per_example = sum(
        math.prod(s.shape[1:]) * tf.as_dtype(s.dtype).size
        for s in keras.tree.flatten(spec)
    )
    return per_example * int(leaves[0].shape[0]) <= sum(
        math.prod(leaf.shape) * tf.as_dtype(leaf.dtype).size for leaf in leaves
    )


def _with_teacher_outputs(teacher, x, batch_size):
    """Inputs `x` packed with the teacher's outputs on them."""
    outputs = teacher.predict(x, batch_size=batch_size or 32, verbose=0)
    return teacher_cache.pack(x, outputs)
