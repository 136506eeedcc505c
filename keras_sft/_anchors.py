"""Private: `SFTModel.fit(anchor_x=...)`, the consistency term on anchors.

Anchors are unlabeled inputs from the old distribution (a sample of the
pretraining inputs). `fit` cycles them beside the labelled batches: Keras's
own adapter of the training data (so `batch_size`, `shuffle`,
`sample_weight`, `class_weight` and `steps_per_epoch` keep their meaning)
is zipped with an endless stream of anchor batches, and each batch's
inputs are packed with its anchors (`_batch`), so that Keras's
distribution splits both across replicas.
"""

import inspect

import keras
import numpy as np
import tensorflow as tf

from keras_sft import _anchor_data
from keras_sft import _batch
from keras_sft import _checks
from keras_sft import _features
from keras_sft import _fit_cache
from keras_sft import _keras_compat

# `SFTModel.fit`'s signature: Keras's, then the anchor options.
FIT_SIGNATURE = _fit_cache.FIT_SIGNATURE.replace(
    parameters=[
        *_fit_cache.FIT_SIGNATURE.parameters.values(),
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
        anchor_batch_size = adapter.batch_size or _anchor_data.first_batch_size(
            adapter
        )
    anchor_batches = _anchor_data.anchor_batches(
        model,
        anchor_x,
        batch_size=anchor_batch_size,
        reads=_anchor_data.anchor_reads(adapter, arguments, anchor_batch_size),
    )
    arguments.update(
        x=_anchor_data.AnchoredData(adapter, anchor_batches, anchor_mode),
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


def replaces(anchors):
    """Whether the consistency term is on the anchors alone."""
    return anchors is not None and anchors.mode == "replace"


def teacher_forward(model, anchors):
    """The teacher's `(outputs, features)` on the anchors, or `None`."""
    if anchors is None:
        return None
    return _features.teacher_forward(
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
    return teacher, _features.student_forward(
        model.student, model._student_extractor, anchors.inputs, training=True
    )
