"""Private: when and how `SFTModel.fit` caches the teacher's outputs.

Given arrays and two or more epochs, on one device, `fit` packs each
example's position beside its inputs (`_batch.pack`), and the steps of the
first epoch store the live teacher's outputs in a buffer by position,
which later epochs read (`_lazy_teacher_cache.LazyTeacherCache`): no
separate pass, so the cache costs nothing the live teacher does not
already pay. Under a `tf.distribute` strategy, where replicas cannot
scatter into one buffer, `fit` runs the teacher once, in one `predict`
pass, and packs its outputs beside the inputs (`_batch.pack`).
"""

import contextlib
import inspect
import math

import keras
import numpy as np
import tensorflow as tf

from keras_sft import _batch
from keras_sft import _keras_compat
from keras_sft import _lazy_teacher_cache
from keras_sft import teacher_cache

# `SFTModel.fit` takes `keras.Model.fit`'s arguments by position or name.
FIT_SIGNATURE = inspect.signature(keras.Model.fit)


@contextlib.contextmanager
def cached_teacher(model, arguments, *, enabled=True):
    """Yields `fit`'s `arguments`, packed for the teacher cache where it
    pays (and `enabled`); frees the cache's buffers when `fit` ends."""
    if not (enabled and caches_teacher(model, arguments)):
        yield arguments
        return
    # Keras records a strategy only when the model is made in its scope.
    if _keras_compat.made_in_strategy_scope(model):
        yield with_predicted_teacher(model, arguments)
        return
    cache = _lazy_cache(model, arguments["x"])
    try:
        yield _with_example_index(cache, arguments)
    finally:
        cache.reset(0)


def teacher_outputs(model, batch):
    """The teacher's outputs on a step's `_batch.Batch` computed before
    the step or kept by the first epoch, `None` where the teacher must run
    live."""
    if batch.example_index is not None:
        return model._lazy_teacher_cache.outputs(batch.x, batch.example_index)
    return batch.teacher_outputs


def _lazy_cache(model, x):
    """`model`'s `LazyTeacherCache`, made on the first call."""
    # Made once per model: the traced train function captures the buffers.
    cache = getattr(model, "_lazy_teacher_cache", None)
    if cache is None or cache.teacher is not model.teacher:
        spec = _lazy_teacher_cache.buffer_spec(model.teacher, x)
        cache = _lazy_teacher_cache.LazyTeacherCache(model.teacher, spec)
        model._lazy_teacher_cache = cache
    return cache


def _with_example_index(cache, arguments):
    """`arguments` with the examples' positions packed into `x` (and into
    array `validation_data`, after the training examples')."""
    arguments = dict(arguments)
    size = _length(arguments["x"])
    arguments["x"] = _batch.pack(arguments["x"], example_index=np.arange(size))
    validation = _array_validation(arguments)
    if validation is not None:
        count = _length(validation[0])
        inputs = _batch.pack(
            validation[0], example_index=np.arange(size, size + count)
        )
        arguments["validation_data"] = (inputs, *validation[1:])
        size += count
    cache.reset(size)
    return arguments


def _array_validation(arguments):
    """`validation_data` where it is arrays, else `None`."""
    validation = arguments.get("validation_data")
    if (
        isinstance(validation, (tuple, list))
        and len(validation) in (2, 3)
        and same_length_arrays(*validation[:2])
    ):
        return validation
    return None


def _length(x):
    """The number of examples in the arrays `x`."""
    return teacher_cache.array_lengths(x)[0]


def with_predicted_teacher(model, arguments):
    """`fit`'s `arguments`, with the outputs of a `predict` pass packed."""
    arguments = dict(arguments)
    batch_size = arguments.get("batch_size")
    arguments["x"] = _with_teacher_outputs(
        model.teacher, arguments["x"], batch_size
    )
    validation = _array_validation(arguments)
    if validation is not None:
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
        and not _keras_compat.in_multi_worker_mode(model.distribute_strategy)
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
    spec = _lazy_teacher_cache.buffer_spec(teacher, x)
    if spec is None:
        return False
    leaves = keras.tree.flatten(x)
    return _lazy_teacher_cache.bytes_per_example(spec) * int(
        leaves[0].shape[0]
    ) <= sum(
        math.prod(leaf.shape) * tf.as_dtype(leaf.dtype).size for leaf in leaves
    )


def _with_teacher_outputs(teacher, x, batch_size):
    """Inputs `x` packed with the teacher's outputs on them."""
    outputs = teacher.predict(x, batch_size=batch_size or 32, verbose=0)
    return _batch.pack(x, teacher_outputs=outputs)
