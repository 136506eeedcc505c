"""The preprocessing of a keras-hub task, applied where the task applies it.

A `keras_hub.models.Task` with a `preprocessor` turns raw samples (strings,
images) into model inputs in its own `fit`, `evaluate` and `predict`, not in
`call`: it batches the data into a `tf.data.Dataset` and maps its
`preprocess_samples` over the batches. Its `train_on_batch`,
`test_on_batch` and `predict_on_batch` apply `preprocess_samples` to the
one batch, eagerly. `SFTModel` calls the student directly, so it does the
same with the student's `preprocess_samples`.
Tasks are recognised by that method and a `preprocessor`, so keras-hub
need not be installed.
"""

import inspect

import keras
import tensorflow as tf

from keras_sft import _keras_compat

# keras-hub's and Keras's batch size when none is given.
_DEFAULT_BATCH_SIZE = 32


def preprocess_samples(student):
    """The student's `preprocess_samples`, or `None` if there is nothing to
    apply (not a task, or a task whose `preprocessor` is `None`)."""
    preprocess = getattr(student, "preprocess_samples", None)
    if not callable(preprocess) or student.preprocessor is None:
        return None
    return preprocess


def preprocessed(
    preprocess, x, y=None, sample_weight=None, batch_size=None, *, shuffle=False
):
    """A dataset of preprocessed batches of `(x, y, sample_weight)`.

    `x` is an already batched `tf.data.Dataset` (with `y` and
    `sample_weight` `None`, as for `keras.Model.fit`) or arrays, batched by
    `batch_size`; with `shuffle`, in a new order each epoch, as
    `keras.Model.fit` shuffles arrays.
    """
    if isinstance(x, tf.data.Dataset):
        dataset = x
    else:
        samples = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        dataset = tf.data.Dataset.from_tensor_slices(samples)
        if shuffle:
            dataset = dataset.shuffle(
                dataset.cardinality(), reshuffle_each_iteration=True
            )
        dataset = dataset.batch(batch_size or _DEFAULT_BATCH_SIZE)
    return dataset.map(
        preprocess, num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)


def inference_arguments(student, method, model, args, kwargs):
    """The arguments of `method` (`keras.Model.evaluate` or `predict`)
    bound to `model`, `args` and `kwargs` as keywords, with the student's
    preprocessing mapped over `x` (and `y`, `sample_weight`)."""
    arguments = dict(
        inspect.signature(method).bind(model, *args, **kwargs).arguments
    )
    arguments.update(arguments.pop("kwargs", {}))
    del arguments["self"]
    preprocess = preprocess_samples(student)
    # Validation inside `fit` reuses the dataset `fit` preprocessed.
    if preprocess is None or _keras_compat.evaluates_inside_fit(arguments):
        return arguments
    arguments["x"] = preprocessed(
        preprocess,
        arguments["x"],
        arguments.pop("y", None),
        arguments.pop("sample_weight", None),
        arguments.pop("batch_size", None),
    )
    return arguments


def batch(student, x, y=None, sample_weight=None):
    """`(x, y, sample_weight)` of one batch, preprocessed as the student's
    own `train_on_batch` preprocesses it: eagerly, then made tensors."""
    preprocess = preprocess_samples(student)
    if preprocess is None:
        return x, y, sample_weight
    return tuple(
        None
        if value is None
        else keras.tree.map_structure(keras.ops.convert_to_tensor, value)
        for value in keras.utils.unpack_x_y_sample_weight(
            preprocess(x, y, sample_weight)
        )
    )


def fit_arguments(student, arguments):
    """`keras.Model.fit`'s bound `arguments`, with the student's
    preprocessing mapped over the training and validation data."""
    preprocess = preprocess_samples(student)
    if preprocess is None:
        return arguments
    arguments = dict(arguments)
    x, y, sample_weight, batch_size, validation_split = (
        arguments.pop(name, None)
        for name in (
            "x",
            "y",
            "sample_weight",
            "batch_size",
            "validation_split",
        )
    )
    validation = arguments.get("validation_data")
    if validation_split and validation is None:
        (x, y, sample_weight), validation = _split(
            (x, y, sample_weight), validation_split
        )
    arguments["x"] = preprocessed(
        preprocess,
        x,
        y,
        sample_weight,
        batch_size,
        shuffle=bool(arguments.get("shuffle", True)),
    )
    # Shuffled above, if at all: Keras warns of `shuffle` with a dataset.
    arguments["shuffle"] = False
    if validation is not None:
        if not isinstance(validation, tf.data.Dataset):
            validation = keras.utils.unpack_x_y_sample_weight(validation)
        else:
            validation = (validation,)
        arguments["validation_data"] = preprocessed(
            preprocess,
            *validation,
            batch_size=arguments.get("validation_batch_size") or batch_size,
        )
    return arguments


def _split(arrays, validation_split):
    """`(x, y, sample_weight)` split as `keras.Model.fit` splits arrays: the
    last `validation_split` of the samples, unshuffled, for validation."""
    count = len(keras.tree.flatten(arrays[0])[0])
    split_at = int(count * (1.0 - validation_split))

    def part(start, stop):
        return tuple(
            None
            if value is None
            else keras.tree.map_structure(lambda a: a[start:stop], value)
            for value in arrays
        )

    return part(0, split_at), part(split_at, count)
