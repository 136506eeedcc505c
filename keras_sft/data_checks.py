"""Up-front checks of training data against the model it will train.

Checking every batch inside the training step would cost speed (and
`tf.debugging` assertions are dropped under XLA), so `check_dataset` looks at
the dataset's element spec and at its first batch, once, before training:

- the dataset yields at least one batch;
- the input shape matches the model's input shape;
- the first batch's inputs are finite (no NaN or Inf);
- the first batch's labels are integers in `[0, num_classes)`.

Later batches are not inspected: a NaN that appears later is caught by
`keras_sft.TerminateOnNaN` through the loss it produces.
"""

import numpy as np
import tensorflow as tf


def _fail(problem, fix):
    """Raises the one-line `ValueError` that names the problem and the fix."""
    raise ValueError(f"{problem}; {fix}.")


def check_dataset(dataset, model, *, num_classes=None):
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
    if num_classes is None and outputs:
        num_classes = int(outputs[0].shape[-1])
    y = np.asarray(y)
    if not np.all(np.isfinite(y)) or not np.array_equal(y, np.round(y)):
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
