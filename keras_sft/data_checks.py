"""Checks of training data against the loss it trains with.

Only what is certainly wrong for the compiled loss is refused, with a
`ValueError` of one line:

- for Keras's own losses, labels that are not numbers, or not finite;
- for a sparse categorical loss, labels that are not integer class
  indices in `[0, classes)` (its `ignore_class` allowed);
- for every loss, sample weights that are negative or NaN, or whose
  shape cannot broadcast to the loss per example (per token, per pixel).

A model with several outputs has each output's labels checked against
its own loss (none for an output without a loss) and each output's
sample weights against that output, the message naming the output; its
labels and weights are checked inside the steps alone.

Inputs are the model's business: a model may impute NaN itself or look
strings up in a vocabulary, so they are not checked, and a NaN that
reaches the loss is kept off the weights by `SFTModel`'s step guard. A
custom loss decides what its labels mean, so its labels are not checked.

- `check_fit_data` runs in `SFTModel.fit`, before training: arrays whole,
  a dataset from its element spec (the dtypes and shapes of every batch)
  and that it yields a batch.
- `BatchCheck` checks the values of every batch inside the training and
  evaluation steps (datasets, generators and arrays alike) in a few
  elementwise operations and one reduction over the labels and weights.
  A faulty batch stops the execution before its loss is computed, and
  `fit`, `evaluate` and `*_on_batch` raise the error naming it. Under
  XLA, which drops `tf.debugging` assertions, the step records the fault
  instead: the step guard refuses that step and every later one, and
  `fit` raises at the epoch's end (`evaluate` at its end).
- `check_dataset` (public) looks at a dataset's spec and first batch, for
  binaries that check their data before training.
"""

import collections
import contextlib
import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_sft import _checks
from keras_sft import _sft_loss

# The message of the assertion that stops a step on a faulty batch.
_FAULT = "BatchCheck found a faulty batch"
# What `BatchCheck` records for no fault; a fault is its check's number.
_NO_FAULT = 0.0


class LabelRule(
    collections.namedtuple("LabelRule", ["loss_name", "sparse", "ignore_class"])
):
    """What the labels of one of Keras's losses must be: finite numbers, and
    for a sparse categorical loss (`sparse`) integer class indices, where
    labels equal to `ignore_class` (if not `None`) are allowed."""

    def expected(self, classes):
        """What the labels must be, for `classes` classes (`None` if
        unknown), as an error message words it."""
        if not self.sparse:
            return f"finite numeric labels for the loss `{self.loss_name}`"
        indices = f"in [0, {classes})" if classes else ">= 0"
        if self.ignore_class is not None:
            indices += f" (or {self.ignore_class}, the ignored class)"
        return (
            f"integer class indices {indices} for the loss `{self.loss_name}`"
        )


def output_label_rules(loss, output_names):
    """`{output name: LabelRule or None}` of `compile`'s `loss` for a model
    with several outputs `output_names`, or `None` (one output, unknown
    names, or no loss: the model's own `compute_loss`). An output's rule
    is `None` where its loss is custom or `None`."""
    if loss is None or output_names is None or len(output_names) < 2:
        return None
    try:
        losses = _sft_loss.per_output(loss, output_names, "loss")
    except ValueError:
        return None
    return {
        name: None if losses[name] is None else label_rule(losses[name], None)
        for name in output_names
    }


def label_rule(loss, output_names):
    """The `LabelRule` of `compile`'s `loss` for a model with outputs
    `output_names` (`None` if unknown), or `None`: for a custom loss, or
    for several outputs."""
    if output_names is not None and len(output_names) > 1:
        return None
    if isinstance(loss, dict) and len(loss) == 1:
        (loss,) = loss.values()
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        (loss,) = loss
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError:
            return None
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return LabelRule(
            type(loss).__name__, True, loss.get_config().get("ignore_class")
        )
    if loss is keras.losses.sparse_categorical_crossentropy:
        return LabelRule(loss.__name__, True, None)
    # Keras's own loss classes and functions; a Keras wrapper of a custom
    # function (its `fn`) is custom.
    owners = [loss]
    if isinstance(loss, keras.losses.Loss):
        owners = [type(loss), getattr(loss, "fn", type(loss))]
    if any(
        getattr(owner, "__module__", "").split(".")[0] != "keras"
        for owner in owners
    ):
        return None
    name = type(loss).__name__ if isinstance(loss, keras.losses.Loss) else ""
    return LabelRule(name or getattr(loss, "__name__", str(loss)), False, None)


def _numeric(dtype):
    """Whether `dtype` (NumPy's or TensorFlow's) holds numbers."""
    try:
        return keras.backend.standardize_dtype(dtype) != "string"
    except ValueError:
        return False


def _bad_labels(rule, y, classes):
    """Where the labels `y` break `rule` (a boolean tensor), for `classes`
    classes (`None` if unknown); `None` where no value can."""
    dtype = keras.backend.standardize_dtype(y.dtype)
    if dtype == "bool":
        return None
    if keras.backend.is_float_dtype(dtype):
        if not rule.sparse:
            return ops.logical_not(ops.isfinite(y))
        # A NaN is unequal to its floor, and `+inf >= inf`.
        bad = ops.logical_or(
            ops.not_equal(y, ops.floor(y)),
            ops.logical_or(
                ops.less(y, 0), ops.greater_equal(y, classes or math.inf)
            ),
        )
    elif not rule.sparse:
        return None
    else:
        bad = ops.less(y, 0)
        if classes:
            bad = ops.logical_or(bad, ops.greater_equal(y, classes))
    if rule.ignore_class is not None:
        bad = ops.logical_and(bad, ops.not_equal(y, rule.ignore_class))
    return bad


def _bad_weights(sample_weight):
    """Where `sample_weight` is negative or NaN (a boolean tensor); `None`
    where no value can be."""
    dtype = keras.backend.standardize_dtype(sample_weight.dtype)
    if dtype == "bool" or dtype.startswith("uint"):
        return None
    negative = ops.less(sample_weight, 0)
    if keras.backend.is_float_dtype(dtype):
        # Not `logical_not(w >= 0)`: Grappler rewrites it to `w < 0`,
        # false for NaN.
        return ops.logical_or(negative, ops.isnan(sample_weight))
    return negative


def _dims(shape):
    """`shape` as a tuple, `None` if it or its rank is unknown (a step
    retraced with `reduce_retracing` may see tensors of unknown rank)."""
    if shape is None or getattr(shape, "rank", 0) is None:
        return None
    return tuple(shape)


def _classes(output_shape):
    """The number of classes of an output of `output_shape` (its last
    axis), `None` if unknown."""
    shape = _dims(output_shape) or ()
    return int(shape[-1]) if len(shape) >= 2 and shape[-1] else None


def _weight_shape_error(weight_shape, output_shape, output_name=None):
    """What a sample weight of `weight_shape` must be to broadcast to the
    loss per example of an output of `output_shape` (named `output_name`
    among several), or `None` if it does (or either is unknown)."""
    weight_shape, output_shape = _dims(weight_shape), _dims(output_shape)
    if weight_shape is None or output_shape is None or len(output_shape) < 2:
        return None
    weight, positions = weight_shape[1:], output_shape[1:-1]

    def matches(shape):
        return len(shape) == len(positions) and all(
            a is None or b is None or a == b
            for a, b in zip(shape, positions, strict=True)
        )

    if (
        (
            all(size == 1 for size in weight)
            and len(weight) <= len(positions) + 1
        )
        or matches(weight)
        or (weight[-1:] == (1,) and matches(weight[:-1]))
    ):
        return None
    per_position = f" or {(None, *positions)}" if positions else ""
    output = f"the output `{output_name}`, " if output_name else "an output "
    return (
        f"shape (N,){per_position}, the loss per example of {output}of "
        f"shape {output_shape}"
    )


def _output_shape(student):
    """The shape of `student`'s single output, `None` if unknown or
    several."""
    outputs = getattr(student, "outputs", None)
    if not outputs or len(outputs) != 1:
        return None
    return tuple(outputs[0].shape)


def check_fit_data(student, arguments, *, rule):
    """Raises `ValueError` unless `SFTModel.fit(**arguments)` can train
    `student` on its data with a loss whose labels follow `rule` (a
    `LabelRule` or `None`): arrays whole, a dataset from its element spec
    and its first batch's presence."""
    x = arguments.get("x")
    if isinstance(x, tf.data.Dataset):
        if next(iter(x.take(1)), None) is None:
            _fail(
                "The dataset is empty: it yielded no batch",
                "check the data source, the class selection and any filter",
            )
        spec = x.element_spec
        # A fourth element holds cached teacher outputs.
        if isinstance(spec, tuple) and len(spec) in (2, 3, 4):
            _check_spec(student, spec[1], (*spec, None)[2], rule)
        return
    if _arrays(x):
        check_arrays(
            student,
            x,
            arguments.get("y"),
            arguments.get("sample_weight"),
            names=("x", "y", "sample_weight"),
            rule=rule,
        )
    validation = arguments.get("validation_data")
    if isinstance(validation, (tuple, list)) and _arrays(validation[0]):
        check_arrays(
            student,
            *validation[:3],
            *[None] * (3 - len(validation[:3])),
            names=tuple(f"validation_data[{i}]" for i in range(3)),
            rule=rule,
        )


def _check_spec(student, y_spec, weight_spec, rule):
    """Raises unless a dataset's label and sample weight specs can train
    `student` (what is static in every batch: dtypes and shapes)."""
    # `None` parts have a `NoneTensorSpec`, structures no dtype.
    if (
        rule is not None
        and isinstance(y_spec, tf.TensorSpec)
        and not _numeric(y_spec.dtype)
    ):
        raise _checks.argument_error(
            "y",
            rule.expected(_classes(_output_shape(student))),
            received=f"labels of dtype {y_spec.dtype.name}",
        )
    if isinstance(weight_spec, tf.TensorSpec):
        _check_weight_spec(
            "sample_weight", weight_spec.dtype, weight_spec.shape, student
        )


def _check_weight_spec(name, dtype, shape, student):
    """Raises unless sample weights of `dtype` and `shape` can weigh the
    loss of `student`'s single output."""
    if not _numeric(dtype):
        raise _checks.argument_error(
            name, "numeric weights", received=f"{name} of dtype {dtype}"
        )
    expected = _weight_shape_error(shape, _output_shape(student))
    if expected is not None:
        raise _checks.argument_error(
            name, expected, received=f"{name}.shape={tuple(shape)}"
        )


def _arrays(x):
    """Whether `x` is a NumPy array or tensor, or a structure of them."""
    leaves = keras.tree.flatten(x) if x is not None else []
    return bool(leaves) and all(
        isinstance(leaf, (np.ndarray, tf.Tensor)) for leaf in leaves
    )


def check_arrays(student, x, y, sample_weight, *, names, rule):
    """Raises `ValueError` in Keras's form unless arrays `x`, `y` and
    `sample_weight` (named `names`) can train `student` with a loss whose
    labels follow `rule` (a `LabelRule` or `None`)."""
    x_name, y_name, weight_name = names
    lengths = {}
    for name, part in ((x_name, x), (y_name, y), (weight_name, sample_weight)):
        for leaf in keras.tree.flatten(part) if part is not None else []:
            shape = np.shape(leaf)
            lengths.setdefault(name, shape[0] if shape else 1)
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
    if rule is not None and y is not None and not keras.tree.is_nested(y):
        y = np.asarray(y)
        classes = _classes(_output_shape(student))
        expected = rule.expected(classes)
        if not _numeric(y.dtype):
            raise _checks.argument_error(
                y_name, expected, received=f"{y_name} of dtype {y.dtype}"
            )
        _refuse_values(y_name, expected, y, _bad_labels(rule, y, classes))
    if sample_weight is not None and not keras.tree.is_nested(sample_weight):
        weights = np.asarray(sample_weight)
        _check_weight_spec(weight_name, weights.dtype, weights.shape, student)
        _refuse_values(
            weight_name, "weights >= 0", weights, _bad_weights(weights)
        )


def _refuse_values(name, expected, values, bad):
    """Raises unless the boolean `bad` (or `None`) is false everywhere,
    quoting up to three of the `values` where it is true."""
    bad = np.zeros((), bool) if bad is None else ops.convert_to_numpy(bad)
    if np.any(bad):
        raise _checks.argument_error(
            name,
            expected,
            received=f"{name} with values such as "
            f"{values[bad].ravel()[:3].tolist()}",
        )


def _fail(problem, fix):
    """Raises the one-line `ValueError` that names the problem and the fix."""
    raise ValueError(f"{problem}; {fix}.")


def check_dataset(dataset, model, *, num_classes=None, class_labels=True):
    """Checks that `dataset` can train `model`, from its spec and first batch.

    Refuses only what is certainly wrong: no batch at all, inputs of the
    model's rank but another shape, labels that are not integer class
    indices in `[0, num_classes)` (with `class_labels`), sample weights
    that are negative or NaN. Inputs are not checked for NaN or dtype:
    that is the model's business. `SFTModel.fit` checks every batch
    inside its steps; this function serves code that checks its data
    before building a model, as the example binaries do.

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
    _check_input_shape(x, model)
    if len(first) > 2 and first[2] is not None:
        weights = np.asarray(first[2])
        if _numeric(weights.dtype) and np.any(_bad_weights(weights)):
            _fail(
                "The sample weights must be >= 0; the first batch holds "
                f"{np.min(weights)}",
                "weigh each example by a number >= 0",
            )
    if not class_labels:
        return
    if num_classes is None:
        num_classes = _classes(_output_shape(model))
    y = np.asarray(y)
    if not _numeric(y.dtype):
        _fail(
            "The labels must be integer class indices; the first batch "
            f"holds {y.dtype} values such as {y.ravel()[:3].tolist()}",
            "encode each label as an integer class index (a StringLookup "
            "layer maps strings to indices)",
        )
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


def _check_input_shape(x, model):
    """Fails if `x` has the rank of `model`'s single input but a size that
    differs where both are known (Keras adapts inputs of another rank)."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1 or keras.tree.is_nested(x):
        return
    expected = tuple(inputs[0].shape)[1:]
    received = tuple(x.shape)[1:]
    if len(received) == len(expected) and any(
        a is not None and a != b
        for a, b in zip(expected, received, strict=True)
    ):
        _fail(
            f"Input shape {received} does not match the model's input shape "
            f"{expected}",
            "reshape the data, or use a model built for this dataset",
        )


def _integral(values):
    """Whether the numeric array `values` holds only finite integers."""
    return bool(
        np.all(np.isfinite(values)) and np.array_equal(values, np.round(values))
    )


class BatchCheck:
    """Checks the labels and sample weights of every batch inside a step.

    The step calls `check` on its batch and the student's outputs: a few
    elementwise comparisons and one reduction, and one counter update per
    step. A faulty batch (a label or weight that `LabelRule` and
    `_bad_weights` refuse) is recorded with its position, and the step
    stops before its loss is computed; `stopping` then raises the one-line
    `ValueError` naming the batch and the value. Under XLA, which drops
    the stop, the step guard refuses the step (`check` returns whether it
    is valid) and `fit` raises at the epoch's end (`with_callback`).

    Example:

    ```python
    check = BatchCheck()  # in the strategy's scope, with the model
    check.rule = label_rule(loss, output_names)
    batch, valid = check.check(batch, y_pred)  # in the step
    with check.stopping("fit"):
        model.fit(**check.with_callback(arguments))
    ```
    """

    def __init__(self):
        self.rule = None
        # Per output name, for a model with several outputs
        # (`output_label_rules`).
        self.output_rules = None
        # The step's batch in the epoch (or evaluation), and the first
        # faulty one: its check's number, the value, its batch.
        self.batches = _state("batch_check_batches", 0, "int64")
        self.fault = _state("batch_check_fault", [_NO_FAULT] * 3, "float32")
        # What each check number refuses (argument, expected, noun), for
        # the error message; numbers stay the same across retraces.
        self.descriptions = []
        self.where = None
        self.epoch = 0

    def check(self, batch, y_pred):
        """Returns `batch` (a `_batch.Batch`), its labels and sample
        weights read only after they are checked against the outputs
        `y_pred`, and whether they are valid (a boolean scalar, `None`
        where nothing is checked).

        Raises `ValueError` while tracing for what the dtypes and shapes
        already say (string labels, a weight shape that cannot broadcast).
        """
        y, sample_weight = batch.y, batch.sample_weight
        if self.output_rules is not None and keras.tree.is_nested(y_pred):
            checks = self._output_checks(y, sample_weight, y_pred)
        else:
            checks = self._single_output_checks(y, sample_weight, y_pred)
        checks = [c for c in checks if c[3] is not None]
        if not checks:
            return batch, None
        valid, done = self._record_fault([(c[0], c[2], c[3]) for c in checks])
        with tf.control_dependencies([done]):
            checked = {
                part: keras.tree.map_structure(
                    lambda t: None if t is None else tf.identity(t),
                    getattr(batch, part),
                )
                for part in {c[1] for c in checks}
            }
            valid = tf.identity(valid)
        return batch._replace(**checked), valid

    def _single_output_checks(self, y, sample_weight, y_pred):
        """`(number, part, values, bad)` of each check of the labels and
        sample weights of a single output (or of unknown outputs)."""
        nested = keras.tree.is_nested
        single = y_pred is not None and not nested(y_pred)
        checks = []
        if self.rule is not None and y is not None and not nested(y):
            classes = _classes(y_pred.shape) if single else None
            checks.append(self._label_check(self.rule, y, classes))
        if sample_weight is not None and not nested(sample_weight):
            output_shape = y_pred.shape if single else None
            checks.append(self._weight_check(sample_weight, [output_shape]))
        return checks

    def _output_checks(self, y, sample_weight, y_pred):
        """`(number, part, values, bad)` of each check of the labels and
        sample weights of several outputs, each named."""
        outputs = _sft_loss.by_name(y_pred, list(self.output_rules))
        nested = keras.tree.is_nested
        try:
            labels = _sft_loss.by_name(y, list(outputs)) if nested(y) else {}
        except ValueError:
            # As many labels as outputs, or Keras's own error says so.
            labels = {}
        checks = []
        for name, rule in self.output_rules.items():
            if rule is not None and labels.get(name) is not None:
                classes = _classes(outputs[name].shape)
                checks.append(
                    self._label_check(rule, labels[name], classes, name)
                )
        if sample_weight is None:
            return checks
        if not nested(sample_weight):
            shapes = {name: output.shape for name, output in outputs.items()}
            checks.append(self._weight_check(sample_weight, shapes))
            return checks
        try:
            weights = _sft_loss.by_name(sample_weight, list(outputs))
        except ValueError:
            return checks
        for name, weight in weights.items():
            if weight is not None and name in outputs:
                checks.append(
                    self._weight_check(weight, {name: outputs[name].shape})
                )
        return checks

    def _label_check(self, rule, y, classes, output=None):
        """The check of labels `y` against `rule`, for `classes` classes,
        of the output named `output` among several (`None` for one)."""
        expected = rule.expected(classes)
        if output is not None:
            expected += f" of the output `{output}`"
        if not _numeric(y.dtype):
            raise _checks.argument_error(
                "y", expected, received=f"labels of dtype {y.dtype.name}"
            )
        number = self._number(("y", expected, "the label"))
        return number, "y", y, _bad_labels(rule, y, classes)

    def _weight_check(self, sample_weight, output_shapes):
        """The check of `sample_weight` against the outputs it weighs:
        `{name: shape}` among several, or `[shape]` of one (`None` if
        unknown)."""
        named = isinstance(output_shapes, dict)
        items = output_shapes.items() if named else [(None, output_shapes[0])]
        for name, shape in items:
            expected = _weight_shape_error(sample_weight.shape, shape, name)
            if expected is not None:
                raise _checks.argument_error(
                    "sample_weight",
                    expected,
                    received=f"sample_weight.shape={tuple(sample_weight.shape)}",
                )
        expected = "weights >= 0"
        if named and len(output_shapes) == 1:
            (name,) = output_shapes
            expected += f" for the output `{name}`"
        number = self._number(("sample_weight", expected, "the weight"))
        bad = _bad_weights(sample_weight)
        return number, "sample_weight", sample_weight, bad

    def _number(self, description):
        """The number of the check that `description` describes."""
        if description not in self.descriptions:
            self.descriptions.append(description)
        return float(self.descriptions.index(description) + 1)

    def _record_fault(self, checks):
        """Whether every replica's batch is valid, and the op that records
        a fault (and, but under XLA, stops the step)."""

        def details():
            # Per check: whether it failed, and a value that failed it.
            parts = []
            for _, values, bad in checks:
                flat = ops.reshape(bad, (-1,))
                first = ops.argmax(ops.cast(flat, "int32"))
                value = ops.take(ops.reshape(values, (-1,)), first)
                parts += [ops.cast(ops.any(flat), "float32")]
                parts += [ops.cast(value, "float32")]
            return ops.stack(parts)[None]

        codes = [what for what, _, _ in checks]
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # Every replica must agree, and record the same fault. The
            # variable's assignment may need a merge call, which a cond in
            # the replica context cannot hold: it is made at every step.
            rows = context.all_gather(details(), axis=0)
            invalid = ops.any(rows[:, 0::2] > 0)
            done = self._record(rows, codes, invalid)
        else:
            invalid = ops.any(checks[0][2])
            for _, _, bad in checks[1:]:
                invalid = ops.logical_or(invalid, ops.any(bad))
            # Valid batches, all but one at most, run no more than this.
            done = ops.cond(
                invalid,
                lambda: self._record(details(), codes, invalid),
                lambda: ops.convert_to_tensor(True),
            )
        self.batches.assign_add(1)
        return ops.logical_not(invalid), done

    def _record(self, rows, codes, invalid):
        """Keeps the first fault (the first failed check, on the first
        replica that failed it) if `invalid`, and then stops the step."""
        failed = rows[:, 0::2] > 0
        check = ops.argmax(ops.cast(ops.any(failed, axis=0), "int32"))
        replica = ops.argmax(ops.cast(ops.take(failed, check, axis=1), "int32"))
        value = rows[replica, 2 * check + 1]
        index = ops.cast(ops.convert_to_tensor(self.batches), "float32")
        code = ops.take(ops.convert_to_tensor(codes), check)
        fault = ops.convert_to_tensor(self.fault)
        self.fault.assign(
            ops.where(
                ops.logical_and(invalid, fault[0] == _NO_FAULT),
                ops.stack([code, value, index]),
                fault,
            )
        )
        # The read orders the stop after the assignment; XLA drops it.
        recorded = ops.convert_to_tensor(self.fault)[0]
        valid = ops.logical_or(ops.logical_not(invalid), recorded == _NO_FAULT)
        # What waits for the returned value (the loss's read of the
        # labels) waits for the stop: a lowered cond passes on a branch's
        # output as soon as it exists, before the branch's other ops run.
        with tf.control_dependencies([tf.debugging.Assert(valid, [_FAULT])]):
            return tf.identity(valid)

    @contextlib.contextmanager
    def stopping(self, where):
        """Resets the check, and raises its `ValueError` where a batch was
        faulty: for the step's stop, the step guard's refusal of it, or
        after the call (under XLA).

        Args:
            where: String, what the batches are: `"fit"` (batch and epoch
                named), `"validation"`, `"evaluate"` or `"batch"` (one
                batch, `*_on_batch`).
        """
        self.where = where
        self.batches.assign(0)
        self.fault.assign([_NO_FAULT] * 3)
        try:
            yield
        except Exception:
            error = self.take_error()
            if error is None:
                raise
            raise error from None
        error = self.take_error()
        if error is not None:
            raise error

    def take_error(self):
        """The `ValueError` of the recorded fault, which it clears, or
        `None`."""
        number, value, batch = (float(v) for v in self.fault.numpy())
        if number == _NO_FAULT:
            return None
        self.fault.assign([_NO_FAULT] * 3)
        place = {
            "fit": f"in batch {int(batch) + 1} of epoch {self.epoch + 1}",
            "validation": f"in batch {int(batch) + 1} of `validation_data`",
            "evaluate": f"in batch {int(batch) + 1} of the evaluated data",
        }.get(self.where, "in the batch")
        name, expected, noun = self.descriptions[int(number) - 1]
        return _checks.argument_error(
            name, expected, received=f"{noun} {_number(value)} {place}"
        )

    def with_callback(self, arguments):
        """`fit`'s `arguments` with, before the user's callbacks, one that
        counts each epoch's batches from 0 and raises at the epoch's end
        if one was faulty (where XLA dropped the step's stop), before any
        callback (a checkpoint) sees the epoch."""
        callbacks = list(arguments.get("callbacks") or [])
        return {
            **arguments,
            "callbacks": [_StopAtFaultyBatch(self), *callbacks],
        }


def _number(value):
    """`value` as a message writes it: `7` for a whole number, else as is."""
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return str(value)


def _state(name, value, dtype):
    """A variable of a `BatchCheck`, one value for all replicas."""
    return keras.Variable(
        value,
        dtype=dtype,
        trainable=False,
        aggregation="only_first_replica",
        name=name,
    )


class _StopAtFaultyBatch(keras.callbacks.Callback):
    """Counts each epoch's batches from 0 and raises the check's error at
    the epoch's end. It has no per-batch hook, so Keras keeps dispatching
    batches asynchronously."""

    def __init__(self, check):
        super().__init__()
        self._check = check

    def on_epoch_begin(self, epoch, logs=None):
        self._check.epoch = epoch
        self._check.batches.assign(0)

    def on_epoch_end(self, epoch, logs=None):
        error = self._check.take_error()
        if error is not None:
            raise error
