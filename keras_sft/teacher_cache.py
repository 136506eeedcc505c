"""Computing the teacher's outputs once and storing them with the data."""

import keras
import numpy as np
import tensorflow as tf

from keras_sft import _checks
from keras_sft import _keras_compat
from keras_sft import _task_preprocessing

# Dataset ops whose output can change from one iteration to the next: a
# cache built from one pass would then pair inputs with the teacher outputs
# of other inputs.
_NONDETERMINISTIC_OPS = ("Shuffle", "Random", "Sampling")


def cache_teacher_outputs(teacher, data, *, batch_size=256, directory=None):
    """Returns `data` with the teacher's outputs stored beside each example.

    The teacher of `SFTModel` is frozen and runs with `training=False`, so
    on deterministic inputs its outputs are the same every epoch. This
    computes them once, in one pass of `teacher.predict` (under the
    teacher's strategy, on its devices), and stores them with the examples:
    each element becomes `(x, y, sample_weight, teacher_outputs)`, the
    structure `SFTModel.train_step` and `test_step` recognise, and each
    epoch then runs the student alone. Training on the cache gives the
    weights of training with the live teacher.

    Shuffle and batch the returned dataset as the original: the outputs
    travel with their examples. Random augmentation
    must not be in `data` (the cache would pair augmented inputs with
    the outputs of other augmentations), and is refused, as are shuffles
    and other random ops (the second pass would not meet the examples in
    the order of the first), `deterministic=False` options and infinite
    datasets. Ops hidden in Python (`py_function`, `from_generator`) cannot
    be checked; they must be deterministic too.

    Memory. Given arrays, the cache adds only the outputs (one float per
    output unit and example) to the arrays' own tensors, as
    `tf.data.Dataset.from_tensor_slices((x, y))` would hold them. Given a
    `tf.data.Dataset` and no `directory`, it reads the examples into
    memory once, as `Dataset.cache()` would (later epochs skip the
    original pipeline's reading and decoding), so it also holds a copy
    of the examples; pass arrays, or a `directory`, where that copy does
    not fit.

    Example:

    ```python
    model = keras_sft.SFTModel(pretrained, lambda_=0.5)
    cached = keras_sft.cache_teacher_outputs(model.teacher, (x, y))
    model.compile(optimizer="adam")
    model.fit(cached.shuffle(10_000).batch(128), epochs=5)
    ```

    Args:
        teacher: `keras.Model`, the frozen teacher (`SFTModel.teacher`).
        data: the fine-tuning examples: a tuple `(x, y)` or
            `(x, y, sample_weight)` of arrays (NumPy arrays or tensors,
            `x` possibly a list or dict of them for several inputs) with
            one example per row, or a `tf.data.Dataset` of unbatched
            examples of that structure, deterministic and finite.
        batch_size: Int > 0, the batch size of the teacher's pass. Defaults
            to `256`.
        directory: String or `None`. `None` keeps the cache in memory; a
            path saves the examples with their outputs there
            (`tf.data.Dataset.save`) and reads them back from disk, for sets
            larger than memory. Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of `(x, y, sample_weight, teacher_outputs)`
        (`sample_weight` is `None` where `data` has none).
    """
    _checks.check_model("teacher", teacher)
    _checks.check_int("batch_size", batch_size, minimum=1)
    if isinstance(data, tf.data.Dataset):
        _check_deterministic(data)
        if directory is None:
            examples = _read_into_memory(data, batch_size)
            cached = _in_memory(teacher, examples, batch_size)
        else:
            cached = _zipped(teacher, data, batch_size)
    else:
        _check_arrays(data)
        # Converted once: the teacher's pass and the dataset below share
        # these tensors, where each would otherwise copy NumPy arrays.
        data = keras.tree.map_structure(
            lambda array: (
                None if array is None else tf.convert_to_tensor(array)
            ),
            data,
        )
        cached = _in_memory(teacher, data, batch_size)
    if directory is None:
        return cached
    cached.save(directory)
    return tf.data.Dataset.load(directory)


def _in_memory(teacher, data, batch_size):
    """In-memory `data` with the teacher's outputs beside each example."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    outputs = predicted_outputs(teacher, x, batch_size=batch_size)
    # `from_tensor_slices` would stack a list (of inputs, or of a
    # multi-output teacher's outputs) into one tensor; tuples stay apart.
    return tf.data.Dataset.from_tensor_slices(
        keras.tree.lists_to_tuples((x, y, sample_weight, outputs))
    )


def _zipped(teacher, dataset, batch_size):
    """`dataset` zipped with the teacher's outputs, for saving to disk."""
    # Two streamed passes: neither the examples nor a copy of them is ever
    # held in memory whole, only the outputs.
    inputs = dataset.map(lambda x, *_: x).batch(batch_size)
    outputs = predicted_outputs(teacher, inputs)
    return tf.data.Dataset.zip(
        dataset,
        tf.data.Dataset.from_tensor_slices(keras.tree.lists_to_tuples(outputs)),
    ).map(_with_teacher_outputs)


def predicted_outputs(model, x, *, batch_size=None):
    """What `model(x, training=False)` returns, from one `predict` pass
    (under the model's strategy, with its preprocessing).

    A model whose own `predict_step` post-processes its outputs (a
    keras-hub object detector's decodes its boxes) predicts through
    `_CallOutputs`, whose step returns them as the model's call does.
    """
    if type(model).predict_step is not keras.Model.predict_step:
        with model.distribute_strategy.scope():
            model = _CallOutputs(model)
    return model.predict(x, batch_size=batch_size, verbose=0)


class _CallOutputs(keras.Model):
    """Predicts the outputs of `model`'s call, preprocessed as `model`'s
    own `predict` preprocesses its inputs."""

    def __init__(self, model):
        super().__init__(name=f"{model.name}_outputs")
        self.model = model

    def call(self, x):
        return self.model(x, training=False)

    def predict(self, x, **kwargs):
        return super().predict(
            **_task_preprocessing.inference_arguments(
                self.model, keras.Model.predict, self, (x,), kwargs
            )
        )


def _read_into_memory(dataset, batch_size):
    """The examples of `dataset` as one tensor per component."""
    batches = list(dataset.batch(batch_size))
    # Tensors, not NumPy arrays: `from_tensor_slices` then takes them
    # without a further copy.
    return keras.tree.map_structure(
        lambda *parts: tf.concat(parts, axis=0), *batches
    )


def array_lengths(data):
    """First dimensions of the arrays in `data` (0 for a scalar), its `None`
    parts skipped; `None` if a part is not a NumPy array or tensor."""
    arrays = [a for a in keras.tree.flatten(data) if a is not None]
    if not all(isinstance(a, (np.ndarray, tf.Tensor)) for a in arrays):
        return None
    return [int(a.shape[0]) if len(a.shape) else 0 for a in arrays]


def _check_arrays(data):
    """Raises `ValueError` unless `data` is `(x, y[, sample_weight])`."""
    if not isinstance(data, tuple) or len(data) not in (2, 3):
        raise ValueError(
            "Invalid value for argument `data`. Expected a `tf.data.Dataset` "
            "or a tuple `(x, y)` or `(x, y, sample_weight)` of arrays. "
            f"Received: data={data!r}"
        )
    counts = array_lengths(data)
    if counts is None:
        kinds = sorted(
            {
                type(a).__name__
                for a in keras.tree.flatten(data)
                if a is not None
            }
        )
        raise ValueError(
            "Invalid value for argument `data`. Expected NumPy arrays or "
            f"tensors in `(x, y[, sample_weight])`. Received: data with "
            f"leaves of types {kinds}"
        )
    if len(set(counts)) != 1 or counts[0] == 0:
        raise ValueError(
            "Invalid value for argument `data`. Expected arrays with the "
            "same number (> 0) of examples along their first axis. "
            f"Received: data with first dimensions {counts}"
        )


def _with_teacher_outputs(example, teacher_outputs):
    """`(x, y, sample_weight, teacher_outputs)` from an example and outputs."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(example)
    return x, y, sample_weight, teacher_outputs


def _check_deterministic(dataset):
    """Raises `ValueError` where two passes over `dataset` could differ."""
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "Invalid value for argument `data`. Expected a finite "
            "dataset: the teacher's outputs are computed in one pass. "
            "Received: an infinite dataset (`repeat()` without a count?). "
            "Cache first, then repeat."
        )
    if dataset.options().deterministic is False:
        raise ValueError(
            "Invalid value for argument `data`. Expected a deterministic "
            "dataset: cached teacher outputs are matched to examples by "
            "position. Received: a dataset with "
            "`options().deterministic=False`."
        )
    random_ops = sorted(
        op
        for op in _keras_compat.dataset_op_types(dataset)
        if any(word in op for word in _NONDETERMINISTIC_OPS)
    )
    if random_ops:
        raise ValueError(
            "Invalid value for argument `data`. Expected a deterministic "
            "dataset without shuffling or random augmentation: cached "
            "teacher outputs are computed once and matched to examples by "
            "position. Cache first, then shuffle; with random augmentation, "
            "train with the live teacher. Received: a dataset with "
            f"{random_ops}"
        )
