"""Private: `SFTModel.fit(anchor_x=...)`, the consistency term on anchors.

Anchors are unlabeled inputs from the old distribution (a sample of the
pretraining inputs). `fit` cycles them beside the labelled batches: Keras's
own adapter of the training data (so `batch_size`, `shuffle`,
`sample_weight`, `class_weight` and `steps_per_epoch` keep their meaning)
is zipped with an endless stream of anchor batches, and each batch's
inputs are packed with its anchors, as `teacher_cache.pack` packs cached
outputs, so that Keras's distribution splits both across replicas. The
step reads them back with `unpack`.
"""

import collections
import functools
import inspect

import keras
import numpy as np
import tensorflow as tf

from keras_sft import checks
from keras_sft import features
from keras_sft import fit_cache
from keras_sft import keras_compat

MODES = ("replace", "both")

# `SFTModel.fit`'s signature: Keras's, then the anchor options.
FIT_SIGNATURE = fit_cache.FIT_SIGNATURE.replace(
    parameters=[
        *fit_cache.FIT_SIGNATURE.parameters.values(),
        inspect.Parameter(
            "anchor_x", inspect.Parameter.KEYWORD_ONLY, default=None
        ),
        inspect.Parameter(
            "anchor_mode", inspect.Parameter.KEYWORD_ONLY, default="replace"
        ),
        inspect.Parameter(
            "anchor_batch_size", inspect.Parameter.KEYWORD_ONLY, default=None
        ),
    ]
)

_INPUTS = "_keras_sft_anchored_inputs"
# One key per mode: the mode then lives in the batch's structure, and a
# second `fit` with the other mode retraces the step instead of reusing
# the first one's graph.
_ANCHORS = {mode: f"_keras_sft_anchors_{mode}" for mode in MODES}

# The anchor part of a batch: inputs, and the teacher's outputs on them
# where `fit` cached them (else `None`).
Anchors = collections.namedtuple(
    "Anchors", ["inputs", "teacher_outputs", "mode"]
)


def fit_arguments(
    model, arguments, *, anchor_x, anchor_mode, anchor_batch_size
):
    """`keras.Model.fit`'s `arguments` for `model.fit(..., anchor_x=...)`.

    Without anchors, the arguments as they are. With anchors, `x` becomes
    an adapter of the training data packed with anchor batches, and the
    arguments that it already applied (`y`, `sample_weight`,
    `class_weight`, `batch_size`, `validation_split`) are cleared.
    """
    checks.check_one_of("anchor_mode", anchor_mode, MODES)
    if anchor_x is None:
        if anchor_batch_size is not None:
            raise checks.argument_error(
                "anchor_batch_size",
                "None without `anchor_x`",
                anchor_batch_size,
            )
        return arguments
    check_anchor_x(anchor_x, model.student)
    if isinstance(anchor_x, tf.data.Dataset) and anchor_batch_size is not None:
        raise checks.argument_error(
            "anchor_batch_size",
            "None when `anchor_x` is a dataset (its batches are used as "
            "they are)",
            anchor_batch_size,
        )
    if anchor_batch_size is not None:
        checks.check_int("anchor_batch_size", anchor_batch_size, minimum=1)
    arguments = dict(arguments)
    x, y, sample_weight = (
        arguments.get(name) for name in ("x", "y", "sample_weight")
    )
    validation_split = arguments.get("validation_split")
    if validation_split and arguments.get("validation_data") is None:
        (x, y, sample_weight), arguments["validation_data"] = (
            keras_compat.train_validation_split(
                (x, y, sample_weight), validation_split
            )
        )
    batch_size = arguments.get("batch_size")
    adapter = keras_compat.data_adapter(
        x,
        y,
        sample_weight,
        batch_size,
        arguments.get("steps_per_epoch"),
        arguments.get("shuffle", True),
        arguments.get("class_weight"),
    )
    if anchor_batch_size is None and not isinstance(anchor_x, tf.data.Dataset):
        anchor_batch_size = adapter.batch_size or _first_batch_size(adapter)
    anchor_batches = _anchor_batches(
        model,
        anchor_x,
        batch_size=anchor_batch_size,
        reads=_anchor_reads(adapter, arguments, anchor_batch_size),
    )
    arguments.update(
        x=_AnchoredData(adapter, anchor_batches, anchor_mode),
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
            raise checks.argument_error(
                "anchor_x", "a non-empty dataset", received="an empty dataset"
            )
        spec = keras.utils.unpack_x_y_sample_weight(anchor_x.element_spec)[0]
        _check_shapes(keras.tree.flatten(spec), student)
        return
    leaves = keras.tree.flatten(anchor_x)
    if not leaves or not all(
        isinstance(leaf, (np.ndarray, tf.Tensor)) for leaf in leaves
    ):
        raise checks.argument_error(
            "anchor_x",
            "a NumPy array or tensor (or a list or dict of them, one per "
            "input of the student), or a `tf.data.Dataset` of batches of "
            "inputs",
            received=f"anchor_x of type {type(anchor_x).__name__}",
        )
    lengths = {int(leaf.shape[0]) if leaf.shape else 0 for leaf in leaves}
    if len(lengths) != 1 or 0 in lengths:
        raise checks.argument_error(
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
                raise checks.argument_error(
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
        raise checks.argument_error(
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


def unpack(data):
    """`(data, anchors)`: a batch without its anchors, and an `Anchors`
    (`None` for a batch without anchors)."""
    x = data[0] if isinstance(data, tuple) else data
    if not isinstance(x, dict) or _INPUTS not in x:
        return data, None
    (mode,) = [mode for mode, key in _ANCHORS.items() if key in x]
    anchors = x[_ANCHORS[mode]]
    anchors = Anchors(anchors["inputs"], anchors.get("teacher_outputs"), mode)
    if isinstance(data, tuple):
        return (x[_INPUTS], *data[1:]), anchors
    return x[_INPUTS], anchors


def replaces(anchors):
    """Whether the consistency term is on the anchors alone."""
    return anchors is not None and anchors.mode == "replace"


def teacher_forward(model, anchors):
    """The teacher's `(outputs, features)` on the anchors, or `None`."""
    if anchors is None:
        return None
    return features.teacher_forward(
        model.teacher,
        model._teacher_extractor,
        anchors.inputs,
        anchors.teacher_outputs,
    )


def with_student(model, anchors, teacher):
    """`(teacher, student)` outputs and features on the anchors, the
    student's in training mode (its batch-normalization statistics see the
    anchor batches), or `None` without anchors."""
    if anchors is None:
        return None
    return teacher, features.student_forward(
        model.student, model._student_extractor, anchors.inputs, training=True
    )


def _pack(mode, data, anchors):
    """A batch `data` with `anchors` packed into its inputs."""
    x = data[0] if isinstance(data, tuple) else data
    packed = {_INPUTS: x, _ANCHORS[mode]: anchors}
    if isinstance(data, tuple):
        return (packed, *data[1:])
    return packed


def _anchor_batches(model, anchor_x, *, batch_size, reads):
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
    if _caches_anchor_outputs(model, count, reads):
        outputs = model.teacher.predict(
            anchor_x, batch_size=max(batch_size, 32), verbose=0
        )
        examples["teacher_outputs"] = keras.tree.lists_to_tuples(outputs)
    # Reshuffled at each pass, whatever `fit`'s `shuffle` (which is about
    # the labelled data): each epoch starts a new pass over the anchors, and
    # in a fixed order a set longer than an epoch's reads would never be
    # read past its first batches. Batches run across the end of the set,
    # so that every batch is full and the anchors are read evenly, however
    # their number compares with the batch size.
    dataset = tf.data.Dataset.from_tensor_slices(examples)
    dataset = dataset.shuffle(count, reshuffle_each_iteration=True)
    return dataset.repeat().batch(batch_size, drop_remainder=True)


def _caches_anchor_outputs(model, count, reads):
    """Whether to compute the teacher's outputs on array anchors once."""
    return (
        model.cache_teacher
        # The pass reads each anchor once: it pays when training reads
        # them more often (or an unknown number of times).
        and (reads is None or reads > count)
        # Cached outputs hold no intermediate features.
        and model.distill_features is None
        and model.lambda_ != 0.0
        and not keras_compat.in_multi_worker_mode(model.distribute_strategy)
    )


def _anchor_reads(adapter, arguments, batch_size):
    """Anchors read by the whole `fit`, `None` where unknown."""
    steps = arguments.get("steps_per_epoch") or adapter.num_batches
    if steps is None or batch_size is None:
        return None
    epochs = arguments.get("epochs", 1) - arguments.get("initial_epoch", 0)
    return steps * epochs * batch_size


def _first_batch_size(adapter):
    """The size of the first batch of `adapter`'s data."""
    first = next(iter(adapter.get_tf_dataset().take(1)))
    x = keras.utils.unpack_x_y_sample_weight(first)[0]
    return int(keras.tree.flatten(x)[0].shape[0])


class _AnchoredData(keras_compat.DataAdapter):
    """Keras's adapter of the training data, its batches packed with
    anchors; epoch sizes and epoch hooks are the wrapped adapter's."""

    def __init__(self, adapter, anchor_batches, mode):
        self._adapter = adapter
        self._anchor_batches = anchor_batches
        self._mode = mode

    def get_tf_dataset(self):
        return tf.data.Dataset.zip(
            self._adapter.get_tf_dataset(), self._anchor_batches
        ).map(functools.partial(_pack, self._mode))

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
