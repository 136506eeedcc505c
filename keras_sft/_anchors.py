"""Private: `SFTModel.fit(anchor_x=...)`, the consistency term on anchors.

Anchors are unlabeled inputs from the old distribution (a sample of the
pretraining inputs). `fit` cycles them beside the labelled batches: Keras's
own adapter of the training data (so `batch_size`, `shuffle`,
`sample_weight`, `class_weight` and `steps_per_epoch` keep their meaning)
is zipped with an endless stream of anchor batches, and each batch's
inputs are packed with its anchors (`_batch.with_anchors`), so that Keras's
distribution splits both across replicas. The step computes the
consistency term on them (`_teacher_outputs.TeacherOutputs.forward`).
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from keras_sft import _batch
from keras_sft import _checks
from keras_sft import _keras_compat
from keras_sft import _teacher_outputs


def fit_arguments(
    model, arguments, *, anchor_x, anchor_mode, anchor_batch_size
):
    """`keras.Model.fit`'s `arguments` for `model.fit(..., anchor_x=...)`.

    Without anchors, the arguments as they are. With anchors, `x` becomes
    an adapter of the training data packed with anchor batches, and the
    arguments that it already applied (`y`, `sample_weight`,
    `class_weight`, `batch_size`, `validation_split`) are cleared.
    """
    _checks.check_one_of("anchor_mode", anchor_mode, _batch.ANCHOR_MODES)
    if anchor_x is None:
        if anchor_batch_size is not None:
            raise _checks.argument_error(
                "anchor_batch_size",
                "None without `anchor_x`",
                anchor_batch_size,
            )
        return arguments
    check_anchor_x(anchor_x, model.student)
    if isinstance(anchor_x, tf.data.Dataset) and anchor_batch_size is not None:
        raise _checks.argument_error(
            "anchor_batch_size",
            "None when `anchor_x` is a dataset (its batches are used as "
            "they are)",
            anchor_batch_size,
        )
    if anchor_batch_size is not None:
        _checks.check_int("anchor_batch_size", anchor_batch_size, minimum=1)
    arguments = dict(arguments)
    x, y, sample_weight = (
        arguments.get(name) for name in ("x", "y", "sample_weight")
    )
    validation_split = arguments.get("validation_split")
    if validation_split and arguments.get("validation_data") is None:
        (x, y, sample_weight), arguments["validation_data"] = (
            _keras_compat.train_validation_split(
                (x, y, sample_weight), validation_split
            )
        )
    batch_size = arguments.get("batch_size")
    adapter = _keras_compat.data_adapter(
        x,
        y,
        sample_weight,
        batch_size,
        arguments.get("steps_per_epoch"),
        arguments.get("shuffle", True),
        arguments.get("class_weight"),
    )
    if anchor_batch_size is None and not isinstance(anchor_x, tf.data.Dataset):
        anchor_batch_size = adapter.batch_size or first_batch_size(adapter)
    batches = anchor_batches(
        model,
        anchor_x,
        batch_size=anchor_batch_size,
        reads=anchor_reads(adapter, arguments, anchor_batch_size),
    )
    arguments.update(
        x=AnchoredData(adapter, batches, anchor_mode),
        y=None,
        sample_weight=None,
        class_weight=None,
        batch_size=None,
        validation_split=0.0,
        # Validation runs on its own data, without anchors, in batches of
        # the size `fit` would have used.
        validation_batch_size=arguments.get("validation_batch_size")
        or batch_size,
    )
    return arguments


def check_anchor_x(anchor_x, student):
    """Raises `ValueError` unless `anchor_x` can feed `student`."""
    if isinstance(anchor_x, tf.data.Dataset):
        if next(iter(anchor_x.take(1)), None) is None:
            raise _checks.argument_error(
                "anchor_x", "a non-empty dataset", received="an empty dataset"
            )
        spec = keras.utils.unpack_x_y_sample_weight(anchor_x.element_spec)[0]
        _check_shapes(keras.tree.flatten(spec), student)
        return
    leaves = keras.tree.flatten(anchor_x)
    if not leaves or not all(
        isinstance(leaf, (np.ndarray, tf.Tensor)) for leaf in leaves
    ):
        raise _checks.argument_error(
            "anchor_x",
            "a NumPy array or tensor (or a list or dict of them, one per "
            "input of the student), or a `tf.data.Dataset` of batches of "
            "inputs",
            received=f"anchor_x of type {type(anchor_x).__name__}",
        )
    lengths = {int(leaf.shape[0]) if leaf.shape else 0 for leaf in leaves}
    if len(lengths) != 1 or 0 in lengths:
        raise _checks.argument_error(
            "anchor_x",
            "arrays with the same number (> 0) of examples along their "
            "first axis",
            received=f"anchor_x with first dimensions {sorted(lengths)}",
        )
    _check_shapes([leaf.shape for leaf in leaves], student)
    for leaf in leaves:
        values = np.asarray(leaf)
        if np.issubdtype(values.dtype, np.floating):
            bad = int(np.sum(~np.isfinite(values)))
            if bad:
                raise _checks.argument_error(
                    "anchor_x",
                    "finite values",
                    received=f"anchor_x with {bad} NaN or Inf values",
                )


def _check_shapes(shapes, student):
    """Raises unless `shapes` (of batches) fit the student's inputs."""
    try:
        inputs = student.inputs
    except AttributeError:
        inputs = None
    if not inputs:
        # Subclassed students declare no inputs to compare with.
        return
    expected = [tuple(tensor.shape) for tensor in inputs]
    received = [tuple(getattr(shape, "shape", shape)) for shape in shapes]
    matching = len(received) == len(expected) and all(
        _compatible(r, e) for r, e in zip(received, expected, strict=True)
    )
    if not matching:
        raise _checks.argument_error(
            "anchor_x",
            f"inputs of the student's input shapes {expected}",
            received=f"anchor_x of shapes {received}",
        )


def _compatible(shape, expected):
    """Whether `shape` matches `expected` past the batch axis (`None`
    matching any size)."""
    return len(shape) == len(expected) and all(
        a is None or b is None or a == b
        for a, b in zip(shape[1:], expected[1:], strict=True)
    )


def anchor_batches(model, anchor_x, *, batch_size, reads):
    """An endless dataset of anchor batches, each a dict with `"inputs"`
    (and the teacher's `"teacher_outputs"` where they are cached)."""
    if isinstance(anchor_x, tf.data.Dataset):
        return anchor_x.map(
            lambda *data: {
                "inputs": keras.utils.unpack_x_y_sample_weight(
                    data[0] if len(data) == 1 else data
                )[0]
            }
        ).repeat()
    anchor_x = keras.tree.lists_to_tuples(anchor_x)
    count = int(keras.tree.flatten(anchor_x)[0].shape[0])
    examples = {"inputs": anchor_x}
    # Computed once where that pays.
    outputs = _teacher_outputs.predicted_anchor_outputs(
        model, anchor_x, batch_size=batch_size, reads=reads
    )
    if outputs is not None:
        examples["teacher_outputs"] = outputs
    # Reshuffled at each pass, whatever `fit`'s `shuffle` (which is about
    # the labelled data): each epoch starts a new pass over the anchors, and
    # in a fixed order a set longer than an epoch's reads would never be
    # read past its first batches. Batches run across the end of the set,
    # so that every batch is full and the anchors are read evenly, however
    # their number compares with the batch size.
    dataset = tf.data.Dataset.from_tensor_slices(examples)
    dataset = dataset.shuffle(count, reshuffle_each_iteration=True)
    return dataset.repeat().batch(batch_size, drop_remainder=True)


def anchor_reads(adapter, arguments, batch_size):
    """Anchors read by the whole `fit`, `None` where unknown."""
    steps = arguments.get("steps_per_epoch") or adapter.num_batches
    if steps is None or batch_size is None:
        return None
    epochs = arguments.get("epochs", 1) - arguments.get("initial_epoch", 0)
    return steps * epochs * batch_size


def first_batch_size(adapter):
    """The size of the first batch of `adapter`'s data."""
    first = next(iter(adapter.get_tf_dataset().take(1)))
    x = keras.utils.unpack_x_y_sample_weight(first)[0]
    return int(keras.tree.flatten(x)[0].shape[0])


class AnchoredData(_keras_compat.DataAdapter):
    """Keras's adapter of the training data, its batches packed with
    anchors; epoch sizes and epoch hooks are the wrapped adapter's."""

    def __init__(self, adapter, anchor_batches, mode):
        self._adapter = adapter
        self.anchor_batches = anchor_batches
        self._mode = mode

    def get_tf_dataset(self):
        return tf.data.Dataset.zip(
            self._adapter.get_tf_dataset(), self.anchor_batches
        ).map(functools.partial(_batch.with_anchors, self._mode))

    @property
    def num_batches(self):
        return self._adapter.num_batches

    @property
    def batch_size(self):
        return self._adapter.batch_size

    @property
    def has_partial_batch(self):
        return self._adapter.has_partial_batch

    @property
    def partial_batch_size(self):
        return self._adapter.partial_batch_size

    def on_epoch_begin(self):
        self._adapter.on_epoch_begin()

    def on_epoch_end(self):
        self._adapter.on_epoch_end()
