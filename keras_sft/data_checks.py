"""Up-front checks of training data against the model it will train.

Checking every batch inside the training step would cost speed (and
`tf.debugging` assertions are dropped under XLA), so `check_dataset` looks at
the dataset's element spec and at its first batch, once, before training:

- the dataset yields at least one batch;
- the input shape matches the model's input shape;
- the first batch's inputs are finite (no NaN or Inf);
- the first batch's labels are integers in `[0, num_classes)`.

Later batches are not inspected: a NaN that appears later is caught by
`SFTModel`'s step guard (or `keras_sft.TerminateOnNaN`) through the loss
it produces, and a label out of range by TensorFlow inside the step, whose
error `one_line_label_errors` shortens to one line.

`check_fit_data` runs these checks in `SFTModel.fit`: on arrays, all of
them, with messages in Keras's form; on a dataset, `check_dataset`.
"""

import contextlib
import re

import keras
import numpy as np
import tensorflow as tf

from keras_sft import _checks

# The losses whose labels are class indices (`SFTModel`'s default).
_SPARSE_LOSSES = (
    "sparse_categorical_crossentropy",
    keras.losses.sparse_categorical_crossentropy,
)


def _fail(problem, fix):
    """Raises the one-line `ValueError` that names the problem and the fix."""
    raise ValueError(f"{problem}; {fix}.")


def check_dataset(dataset, model, *, num_classes=None, class_labels=True):
    """Checks that `dataset` can train `model`, from its spec and first batch.

    Example:

    ```python
    check_dataset(train_ds, model.student)  # before model.fit(train_ds)
    ```

    Args:
        dataset: A batched `tf.data.Dataset` of `(x, y)`,
            `(x, y, sample_weight)` or, from `cache_teacher_outputs`,
            `(x, y, sample_weight, teacher_outputs)`.
        model: The built `keras.Model` to train (or an `SFTModel`'s student).
        num_classes: Int, the number of classes; labels must lie in
            `[0, num_classes)`. Defaults to `None`: the size of the model's
            last output axis.
        class_labels: Bool, whether the labels are class indices (for a
            sparse categorical loss) and are checked as such. Defaults to
            `True`.

    Raises:
        ValueError: one line naming what is wrong and how to fix it.
    """
    first = next(iter(dataset.take(1)), None)
    if first is None:
        _fail(
            "The dataset is empty: it yielded no batch",
            "check the data source, the class selection and any filter",
        )
    # A fourth element holds cached teacher outputs (cache_teacher_outputs).
    if not isinstance(first, tuple) or len(first) not in (2, 3, 4):
        _fail(
            "Expected batches of (x, y) or (x, y, sample_weight), received "
            f"{type(first).__name__} of {len(tf.nest.flatten(first))} tensors",
            "map the dataset to such tuples",
        )
    x, y = first[0], first[1]
    # Subclassed models have no symbolic inputs or outputs to compare with.
    inputs = getattr(model, "inputs", None)
    outputs = getattr(model, "outputs", None)
    expected = tuple(inputs[0].shape)[1:] if inputs else None
    if expected is not None and tuple(x.shape)[1:] != expected:
        _fail(
            f"Input shape {tuple(x.shape)[1:]} does not match the model's "
            f"input shape {expected}",
            "reshape the data, or use a model built for this dataset",
        )
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        _fail(
            f"The inputs contain {np.sum(~np.isfinite(x))} NaN or Inf values "
            "in the first batch",
            "clean or impute the data before training",
        )
    if not class_labels:
        return
    if num_classes is None and outputs:
        num_classes = int(outputs[0].shape[-1])
    y = np.asarray(y)
    if not _integral(y):
        _fail(
            "The labels must be integer class indices; the first batch "
            f"holds {y.dtype} values such as {y.ravel()[:3].tolist()}",
            "encode each label as an integer class index",
        )
    if y.min() < 0:
        _fail(
            f"The labels must be >= 0; the first batch holds {y.min()}",
            "encode each label as an integer from 0",
        )
    if num_classes is not None and y.max() >= num_classes:
        _fail(
            f"The labels must be < {num_classes}, the model's number of "
            f"classes; the first batch holds {y.max()}",
            "use a model with as many outputs as classes, or remap labels",
        )


def _integral(values):
    """Whether the numeric array `values` holds only finite integers."""
    return bool(
        np.all(np.isfinite(values)) and np.array_equal(values, np.round(values))
    )


def sparse_labels(loss, output_names):
    """Whether a model with outputs `output_names` (`None` if unknown) is
    trained with `loss` on a single output and a sparse categorical loss,
    whose labels are class indices."""
    if output_names is not None and len(output_names) > 1:
        return False
    if isinstance(loss, str):
        return loss == "sparse_categorical_crossentropy"
    return isinstance(loss, keras.losses.SparseCategoricalCrossentropy) or (
        loss is keras.losses.sparse_categorical_crossentropy
    )


def check_fit_data(student, arguments, *, sparse):
    """Raises `ValueError` unless `SFTModel.fit(**arguments)` can train
    `student` on its data: arrays fully, a dataset from its first batch.
    `sparse`: whether the labels are class indices (`sparse_labels`)."""
    x = arguments.get("x")
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        if isinstance(spec, tuple) and not any(
            keras.tree.is_nested(part) for part in spec[:2]
        ):
            check_dataset(x, student, class_labels=sparse)
        return
    if _arrays(x):
        check_arrays(
            student,
            x,
            arguments.get("y"),
            arguments.get("sample_weight"),
            names=("x", "y", "sample_weight"),
            sparse=sparse,
        )
    validation = arguments.get("validation_data")
    if isinstance(validation, (tuple, list)) and _arrays(validation[0]):
        check_arrays(
            student,
            *validation[:3],
            *[None] * (3 - len(validation[:3])),
            names=tuple(f"validation_data[{i}]" for i in range(3)),
            sparse=sparse,
        )


def _arrays(x):
    """Whether `x` is a NumPy array or tensor, or a structure of them."""
    leaves = keras.tree.flatten(x) if x is not None else []
    return bool(leaves) and all(
        isinstance(leaf, (np.ndarray, tf.Tensor)) for leaf in leaves
    )


def check_arrays(student, x, y, sample_weight, *, names, sparse):
    """Raises `ValueError` in Keras's form unless arrays `x`, `y` and
    `sample_weight` (named `names`) can train `student`."""
    x_name, y_name, weight_name = names
    parts = [(x_name, x), (y_name, y), (weight_name, sample_weight)]
    lengths = {}
    for name, part in parts:
        if part is None:
            continue
        for leaf in keras.tree.flatten(part):
            leaf = np.asarray(leaf)
            if leaf.dtype.kind not in "biuf":
                raise _checks.argument_error(
                    name,
                    "numeric arrays",
                    received=f"{name} of dtype {leaf.dtype}",
                )
            if leaf.dtype.kind == "f" and not np.all(np.isfinite(leaf)):
                raise _checks.argument_error(
                    name,
                    "finite values",
                    received=f"{name} with "
                    f"{np.sum(~np.isfinite(leaf))} NaN or Inf values",
                )
            lengths.setdefault(name, len(leaf) if leaf.ndim else 1)
    count = lengths.get(x_name, 0)
    if count == 0:
        raise _checks.argument_error(
            x_name, "at least one example", received=f"{x_name} with 0"
        )
    for name, length in lengths.items():
        if length != count:
            raise _checks.argument_error(
                name,
                f"as many examples as `{x_name}` ({count})",
                received=f"sizes {x_name}={count}, {name}={length}",
            )
    if sparse and y is not None and not keras.tree.is_nested(y):
        _check_class_labels(student, np.asarray(y), y_name)
    if sample_weight is not None:
        _check_sample_weight(student, np.asarray(sample_weight), weight_name)


def _check_class_labels(student, y, name):
    """Raises unless `y` holds class indices of `student`'s single output."""
    classes = (_output_shape(student) or (None,))[-1]
    expected = "integer class indices" + (
        f" in [0, {classes})" if classes else ""
    )
    bad = ~np.isclose(y, np.round(y), rtol=0, atol=0)
    bad |= y < 0
    if classes:
        bad |= y >= classes
    if np.any(bad):
        raise _checks.argument_error(
            name,
            f"{expected} for a sparse categorical loss",
            received=f"{name} with values such as "
            f"{y[bad].ravel()[:3].tolist()}",
        )


def _check_sample_weight(student, weights, name):
    """Raises unless `weights` are finite, >= 0, not all zero, and of shape
    `(N,)` or the positions of `student`'s outputs."""
    shape = _output_shape(student)
    if shape is not None and weights.shape[1:] not in ((), (1,), shape[1:-1]):
        raise _checks.argument_error(
            name,
            f"shape (N,) or (N, *{shape[1:-1]}), the output's positions",
            received=f"{name}.shape={weights.shape}",
        )
    if np.any(weights < 0) or not np.any(weights > 0):
        raise _checks.argument_error(
            name,
            "weights >= 0, not all zero",
            received=f"{name} with minimum {weights.min()} and maximum "
            f"{weights.max()}",
        )


def _output_shape(student):
    """The shape of `student`'s single output, `None` if unknown or
    several."""
    outputs = getattr(student, "outputs", None)
    if not outputs or len(outputs) != 1:
        return None
    return tuple(outputs[0].shape)


@contextlib.contextmanager
def one_line_label_errors():
    """Turns TensorFlow's error about an out-of-range label, found inside a
    step (after the up-front checks), into a one-line `ValueError`.

    The graph trace is dropped from the message; the original error stays
    in the `__context__` of the new one.
    """
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        match = re.search(
            r"Received a label value of (-?\d+) which is outside the valid "
            r"range of \[0, (\d+)\)",
            error.message,
        )
        if match is None:
            raise
        raise _checks.argument_error(
            "y",
            f"integer class indices in [0, {match[2]})",
            received=f"a label value of {match[1]} in a batch after the first",
        ) from None
