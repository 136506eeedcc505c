"""ForgettingMonitor: forgetting measured at each epoch, in the logs."""

import keras
import numpy as np
import tensorflow as tf

from keras_sft import _checks

# The logs it adds, each better when higher: `SFTModel.fit` tells Keras's
# monitors (`EarlyStopping` and the like) so, without `mode="max"`.
LOG_DIRECTIONS = {"retained_accuracy": "max", "teacher_agreement": "max"}


class ForgettingMonitor(keras.callbacks.Callback):
    """Adds to each epoch's logs how much of the old task the model keeps.

    At the end of each epoch it predicts on `x`, inputs of the old task
    (a held-out sample of the pretraining data, or anchor inputs), and
    adds to the logs:

    - `retained_accuracy`: the student's accuracy on `(x, y)`, when `y`
      is given (or `x` is a dataset of `(inputs, labels)`);
    - `teacher_agreement`: the fraction of `x` on which the student's top
      class is the teacher's, when the model is an `SFTModel` (its
      teacher is frozen, so its predictions are made once, when training
      begins). It needs no labels.

    Callbacks after it in `fit`'s list (`EarlyStopping`,
    `ModelCheckpoint`, `ReduceLROnPlateau`, `TensorBoard`, `CSVLogger`)
    and the progress bar and `History` see both; put it first. For
    outputs of more than one position (per-pixel logits), the top class
    is taken per position and every position counts once.

    Example:

    ```python
    monitor = keras_sft.ForgettingMonitor(old_x, old_y)
    stop = keras.callbacks.EarlyStopping(
        monitor="retained_accuracy", mode="max", patience=2
    )
    model.fit(new_x, new_y, epochs=20, callbacks=[monitor, stop])
    ```

    Args:
        x: Inputs of the old task: a NumPy array or tensor (or a list or
            dict of them, one per model input), or a finite
            `tf.data.Dataset` of batches of inputs or of `(inputs,
            labels)`, read once into memory when training begins.
        y: Integer class labels of `x` (an array), or `None`. Defaults to
            `None`.
        batch_size: Int > 0, the batch size of the predictions on arrays.
            Defaults to `256`.

    Reference:
        - Kirkpatrick et al., "Overcoming catastrophic forgetting in
          neural networks", PNAS 2017 (https://arxiv.org/abs/1612.00796):
          forgetting measured as accuracy kept on the old task.
    """

    def __init__(self, x, y=None, *, batch_size=256):
        super().__init__()
        _checks.check_int("batch_size", batch_size, minimum=1)
        if isinstance(x, tf.data.Dataset):
            if y is not None:
                raise _checks.argument_error(
                    "y",
                    "None when `x` is a dataset (its labels, if any, are "
                    "read from it)",
                    received="an array beside a dataset",
                )
            if x.cardinality() == tf.data.INFINITE_CARDINALITY:
                raise _checks.argument_error(
                    "x",
                    "a finite dataset: it is read whole when training begins",
                    received="an infinite dataset (`repeat()` without a "
                    "count?)",
                )
        else:
            count = _count(x, "x")
            if y is not None and _count(y, "y") != count:
                raise _checks.argument_error(
                    "y",
                    f"one label per example of `x` ({count})",
                    received=f"{_count(y, 'y')} labels",
                )
        self.x = x
        self.y = y
        self.batch_size = batch_size
        self._batches = None
        self._labels = None
        self._teacher_classes = None

    def on_train_begin(self, logs=None):
        inputs, self._labels = self._read()
        # Made once: `predict` on arrays would make a dataset of them at
        # every epoch, which costs ten times the predictions on small sets.
        # One-element tuples, so that `predict` reads no labels in them;
        # tuples, as `tf.data` reads a list as one tensor.
        inputs = tuple(inputs) if isinstance(inputs, list) else inputs
        self._batches = tf.data.Dataset.from_tensor_slices((inputs,)).batch(
            self.batch_size
        )
        teacher = getattr(self.model, "teacher", None)
        self._teacher_classes = (
            None if teacher is None else self._classes(teacher)
        )

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        classes = self._classes(getattr(self.model, "student", self.model))
        if self._labels is not None:
            labels = self._labels
            if labels.ndim == classes.ndim + 1 and labels.shape[-1] == 1:
                # Labels of shape `(n, 1)`, as Keras's sparse losses take.
                labels = labels[..., 0]
            logs["retained_accuracy"] = _fraction(classes == labels)
        if self._teacher_classes is not None:
            logs["teacher_agreement"] = _fraction(
                classes == self._teacher_classes
            )

    def _read(self):
        """`(inputs, labels)` of `x`, `labels` `None` where there are none."""
        if not isinstance(self.x, tf.data.Dataset):
            labels = None if self.y is None else np.asarray(self.y)
            return self.x, labels
        inputs, labels = [], []
        for batch in self.x:
            batch_x, batch_y, _ = keras.utils.unpack_x_y_sample_weight(batch)
            inputs.append(batch_x)
            labels.append(batch_y)
        if not inputs:
            raise ValueError(
                "ForgettingMonitor's dataset `x` is empty: give it inputs "
                "of the old task."
            )
        joined = keras.tree.map_structure(
            lambda *parts: np.concatenate(
                [keras.ops.convert_to_numpy(p) for p in parts]
            ),
            *inputs,
        )
        if any(label is None for label in labels):
            return joined, None
        return joined, np.concatenate(
            [keras.ops.convert_to_numpy(label) for label in labels]
        )

    def _classes(self, model):
        """The top class of `model`'s outputs on the monitored inputs."""
        outputs = model.predict(self._batches, verbose=0)
        if keras.tree.is_nested(outputs):
            raise ValueError(
                "ForgettingMonitor needs a model with one output (class "
                f"logits or probabilities); this one has "
                f"{len(keras.tree.flatten(outputs))}."
            )
        return np.argmax(outputs, axis=-1)


def _count(arrays, name):
    """The number of examples in `arrays`; raises unless they are arrays."""
    leaves = keras.tree.flatten(arrays)
    if not leaves or not all(
        isinstance(leaf, (np.ndarray, tf.Tensor)) and len(leaf.shape)
        for leaf in leaves
    ):
        raise _checks.argument_error(
            name,
            "a NumPy array or tensor (or a list or dict of them), or a "
            "`tf.data.Dataset`"
            if name == "x"
            else "a NumPy array or tensor of integer labels, or None",
            received=f"{name} of type {type(arrays).__name__}",
        )
    counts = {int(leaf.shape[0]) for leaf in leaves}
    if len(counts) != 1 or 0 in counts:
        raise _checks.argument_error(
            name,
            "arrays with the same number (> 0) of examples along their "
            "first axis",
            received=f"{name} with first dimensions {sorted(counts)}",
        )
    return counts.pop()


def _fraction(matches):
    """The mean of a boolean array, as a Python float."""
    return float(np.mean(matches))
