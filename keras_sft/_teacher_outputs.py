"""Private: where the teacher's outputs come from, behind one interface.

Each training step needs the teacher's `(outputs, features)` on its
inputs and on its anchors, computed without gradient, and the student's,
computed inside the gradient tape. `TeacherOutputs`, which each `SFTModel`
owns, gives both for a step's `_batch.Batch` in one call, `forward`, from
one of these sources:

- `_Live`: the teacher runs on the inputs (through feature extractors
  with `distill_features`);
- `_SharedPrefix`: the frozen leading layers that the student shares with
  its default teacher (`_frozen_prefix`) run once, for both;
- `_Given`: outputs computed before the step: the 4-tuples of
  `keras_sft.cache_teacher_outputs`, a `predict` pass that `fit` made
  under a strategy or on array anchors, or the first epoch's buffer
  (`_FirstEpochCache`) by example position.

Each source is called with a step's inputs and `training`, and returns
the teacher's `Forward` on them and a function that computes the
student's. A new way of getting the outputs is one more source, chosen in
`TeacherOutputs._source`. The fit-time side lives here too: whether
caching pays (`may_cache`, the one rule for inputs and anchors), and the
passes and packing it needs (`TeacherOutputs.cached_fit`,
`predicted_anchor_outputs`). Tensors go through `keras.ops`; the buffer's
TensorFlow variables through `_keras_compat`.
"""

import collections
import contextlib
import math

import keras
import numpy as np
from keras import ops

from keras_sft import _batch
from keras_sft import _checks
from keras_sft import _frozen_prefix
from keras_sft import _keras_compat
from keras_sft import teacher_cache

# One model's `outputs` on a set of inputs, with its `features`, a dict by
# `distill_features` layer name (empty without).
Forward = collections.namedtuple("Forward", ["outputs", "features"])
# A `Forward` on a step's `inputs` and one on its `anchors`, each `None`
# where the model does not run there.
Views = collections.namedtuple("Views", ["inputs", "anchors"])


def may_cache(model):
    """Whether `model` (an `SFTModel`) may train on teacher outputs
    computed once instead of at every step, on its inputs or anchors."""
    return (
        model.cache_teacher
        # Cached outputs hold no intermediate features.
        and model.distill_features is None
        and model.lambda_ != 0.0
        and not _keras_compat.in_multi_worker_mode(model.distribute_strategy)
    )


class TeacherOutputs:
    """The teacher's outputs for the steps of one `SFTModel`, and the
    student's forward pass that goes with them.

    Holds what the steps reuse from one call to the next: the feature
    extractors, the first epoch's buffers, and the frozen-prefix split
    with the layer trainability it was made for. None of it is a weight
    or saved state, and none of it is set on the model.

    Example:

    ```python
    outputs = TeacherOutputs(teacher, student, distill_features=None)
    teacher_views, student = outputs.forward(batch, training=True)
    with tf.GradientTape() as tape:
        student_views = student()
    ```

    Args:
        teacher: The frozen teacher.
        student: The student.
        distill_features: List of layer names, or `None`.
    """

    def __init__(self, teacher, student, distill_features):
        self.teacher = teacher
        self.student = student
        extractors = _extractors(teacher, student, distill_features)
        self._live = _Live(teacher, student, *extractors)
        # Made by the first `fit` that caches, kept for later ones: the
        # traced train function captures its buffers.
        self.first_epoch_cache = None
        # `(trainability, split)` of the last split made.
        self._split = None

    def forward(self, batch, *, training):
        """The teacher's `Views` on a step's `batch` and a function that
        returns the student's.

        The teacher's outputs are computed now, without gradient; its
        `inputs` are `None` where the consistency term is on the anchors
        alone. Call the function inside the gradient tape: the student
        runs there with `training` on the inputs, and in training mode
        on the anchors (its batch-normalization statistics see them).
        """
        if _replaces(batch.anchors):
            teacher = None
            student = self._live.student_forward(batch.x, training)
        else:
            teacher, student = self._source(batch, training)(batch.x, training)
        teacher_anchors, student_anchors = None, None
        anchors = batch.anchors
        if anchors is not None:
            source = (
                self._live
                if anchors.teacher_outputs is None
                else _Given(anchors.teacher_outputs, self._live)
            )
            teacher_anchors, student_anchors = source(anchors.inputs, True)

        def student_views():
            return Views(
                student(),
                None if anchors is None else student_anchors(),
            )

        return Views(teacher, teacher_anchors), student_views

    def _source(self, batch, training):
        """The source of the teacher's outputs on the inputs of `batch`."""
        if batch.example_index is not None:
            outputs = self.first_epoch_cache.outputs(
                batch.x, batch.example_index
            )
            return _Given(outputs, self._live)
        if batch.teacher_outputs is not None:
            return _Given(batch.teacher_outputs, self._live)
        split = self.shared_prefix(batch) if training else None
        return self._live if split is None else _SharedPrefix(split)

    def split_prefix(self):
        """Finds where the student and its teacher can be split (the
        frozen layers they share), for the layers' current `trainable`.

        Called before the training step is traced (by
        `make_train_function`), so that the step only reads the split; a
        step traced for layers whose `trainable` changed since runs both
        models whole.
        """
        if self._live.features:
            return
        key = self._split_key()
        if self._split is None or self._split[0] != key:
            self._split = (
                key,
                _frozen_prefix.split(self.student, self.teacher),
            )

    def shared_prefix(self, batch=None):
        """The `_frozen_prefix.Split` that a training step on `batch` (a
        plain batch if `None`) runs through, or `None`: with
        `distill_features`, where the teacher does not run on the batch's
        inputs (outputs computed before, anchors replacing them), where no
        layer can be shared, or where `split_prefix` has not seen the
        layers' current `trainable`."""
        if self._live.features or (
            batch is not None
            and (
                batch.teacher_outputs is not None
                or batch.example_index is not None
                or _replaces(batch.anchors)
            )
        ):
            return None
        if self._split is None or self._split[0] != self._split_key():
            return None
        return self._split[1]

    def _shares_prefix(self):
        """Whether the live step would run the student's frozen leading
        layers once for both models (`split_prefix`, for the layers'
        current `trainable`; without `distill_features`, which
        `_caches_inputs` has already ruled out)."""
        # The live teacher then runs only past the prefix, and a cache,
        # whose first epoch or `predict` pass runs the whole teacher,
        # costs more than it saves: three-epoch fits of a CNN with a
        # frozen backbone ran 0.80x as fast as with the cache off
        # (docs/performance.md, "The cache's threshold"). No split is
        # kept here: `split_prefix` makes it when the step is traced.
        return _frozen_prefix.shares(self.student, self.teacher)

    def _split_key(self):
        """Each student layer's `trainable`, and which variables the
        teacher holds (they change when it unshares)."""
        return (
            tuple(
                layer.trainable
                for layer in _keras_compat.all_layers(self.student)
            ),
            tuple(id(w) for w in self.teacher.weights),
        )

    @contextlib.contextmanager
    def cached_fit(self, model, arguments, *, enabled=True):
        """Yields `fit`'s `arguments` for `model` (the `SFTModel` that owns
        this), packed for cached teacher outputs where that pays (and
        `enabled`); frees the first epoch's buffers when `fit` ends.

        Given arrays and three or more epochs, and no frozen prefix that
        the live step shares (`_shares_prefix`), on one device, each
        example's position is packed beside its inputs, and the steps of
        the first epoch store the live teacher's outputs in a buffer by
        position, which later epochs read: no separate pass. Under a
        strategy, where replicas cannot scatter into one buffer, the
        teacher runs once, in one `predict` pass, for two or more epochs,
        and its outputs are packed beside the inputs.
        """
        if not (
            enabled
            and _caches_inputs(model, arguments)
            and not self._shares_prefix()
        ):
            yield arguments
            return
        if _keras_compat.made_in_strategy_scope(model):
            yield _with_predicted_outputs(self.teacher, arguments)
            return
        if (
            self.first_epoch_cache is None
            or self.first_epoch_cache.teacher is not self.teacher
        ):
            self.first_epoch_cache = _FirstEpochCache(
                self.teacher, buffer_spec(self.teacher, arguments["x"])
            )
        try:
            yield _with_example_index(self.first_epoch_cache, arguments)
        finally:
            self.first_epoch_cache.reset(0)


def predicted_anchor_outputs(model, anchor_x, *, batch_size, reads):
    """The teacher's outputs on array anchors `anchor_x`, from one
    `predict` pass, where that pays (`reads`, the anchors the whole `fit`
    reads, exceeds their number, or is unknown); else `None`."""
    count = int(keras.tree.flatten(anchor_x)[0].shape[0])
    if not (may_cache(model) and (reads is None or reads > count)):
        return None
    outputs = teacher_cache.predicted_outputs(
        model.teacher, anchor_x, batch_size=max(batch_size, 32)
    )
    return keras.tree.lists_to_tuples(outputs)


class _Live:
    """The teacher and the student run on the step's inputs; with
    `distill_features`, through extractors that also return features."""

    def __init__(self, teacher, student, teacher_extractor, student_extractor):
        self.teacher = teacher
        self.student = student
        self.teacher_extractor = teacher_extractor
        self.student_extractor = student_extractor
        self.features = teacher_extractor is not None

    def __call__(self, x, training):
        """`(teacher Forward, student function)` on inputs `x`."""
        if self.teacher_extractor is None:
            teacher = (self.teacher(x, training=False), {})
        else:
            teacher = self.teacher_extractor(x, training=False)
        return _without_gradient(teacher), self.student_forward(x, training)

    def student_forward(self, x, training):
        """A function that returns the student's `Forward` on `x`."""

        def forward():
            if self.student_extractor is None:
                return Forward(self.student(x, training=training), {})
            return Forward(*self.student_extractor(x, training=training))

        return forward


class _Given:
    """Teacher outputs computed before the step; the student runs live."""

    def __init__(self, outputs, live):
        self.outputs = outputs
        self.live = live

    def __call__(self, x, training):
        if self.live.features:
            raise ValueError(
                "Cached teacher outputs hold no intermediate features: with "
                "`distill_features`, train on the plain dataset (the "
                "teacher runs live)"
            )
        return (
            _without_gradient((self.outputs, {})),
            self.live.student_forward(x, training),
        )


class _SharedPrefix:
    """The frozen layers the student shares with its teacher run once,
    outside the gradient tape; both suffixes read their outputs."""

    def __init__(self, split):
        self.split = split

    def __call__(self, x, training):
        # The prefix computes what the student computes in training; its
        # layers compute the same in inference, as the teacher runs.
        frontier = self.split.prefix(x, training=True)
        frontier = keras.tree.map_structure(ops.stop_gradient, frontier)
        teacher = self.split.teacher_suffix(frontier, training=False)

        def student():
            return Forward(
                self.split.student_suffix(frontier, training=True), {}
            )

        return _without_gradient((teacher, {})), student


class _FirstEpochCache:
    """A buffer of the teacher's outputs, one row per example, filled by
    the steps that first meet each example.

    The live teacher runs in the first epoch anyway; storing its outputs
    then costs a scatter per step and no separate pass (no `predict`, no
    extra tracing), and every later epoch reads them back. Each step pays
    a `cond` (read or compute) and a gather; the teacher's forward pass
    saved from the second epoch pays for them from three epochs
    (`_epochs_that_pay`).

    The buffers are variables of unknown length, made once per model and
    resized at each `fit`, so the traced train function that captures them
    stays valid from one `fit` call to the next. They are held outside
    Keras's tracking: neither weights nor saved state.

    Args:
        teacher: the frozen teacher, whose outputs the buffers hold.
        spec: the structure of `KerasTensor`s of its outputs, with fully
            known shapes after the batch axis.
    """

    def __init__(self, teacher, spec):
        self.teacher = teacher
        self._outputs = keras.tree.map_structure(
            lambda s: _keras_compat.resizable_rows(s.shape[1:], s.dtype), spec
        )
        self._filled = _keras_compat.resizable_rows((), "bool")

    def reset(self, size):
        """Empties the buffers and gives them `size` rows."""
        for variable in keras.tree.flatten(self._outputs):
            variable.assign(
                ops.zeros((size, *variable.shape[1:]), variable.dtype)
            )
        self._filled.assign(ops.zeros((size,), "bool"))

    def outputs(self, x, index):
        """The teacher's outputs on the batch `x` of examples `index`."""

        def read():
            return keras.tree.map_structure(
                lambda variable: _keras_compat.gather_rows(variable, index),
                self._outputs,
            )

        def compute():
            # In the buffers' dtype: a Functional teacher cast to another
            # precision (`teacher_dtype`) still reports its first outputs'
            # dtype, and casting its outputs up is exact.
            outputs = keras.tree.map_structure(
                lambda value, variable: ops.cast(value, variable.dtype),
                self.teacher(x, training=False),
                self._outputs,
            )
            for variable, value in zip(
                keras.tree.flatten(self._outputs),
                keras.tree.flatten(outputs),
                strict=True,
            ):
                _keras_compat.scatter_rows(variable, index, value)
            _keras_compat.scatter_rows(
                self._filled, index, ops.ones_like(index, "bool")
            )
            return keras.tree.map_structure(ops.copy, outputs)

        return ops.cond(
            ops.all(_keras_compat.gather_rows(self._filled, index)),
            read,
            compute,
        )


def _replaces(anchors):
    """Whether the consistency term is on the anchors alone."""
    return anchors is not None and anchors.mode == "replace"


def _without_gradient(forward):
    """A `Forward` from `(outputs, features)`, with gradients stopped."""
    return Forward(*keras.tree.map_structure(ops.stop_gradient, forward))


def _caches_inputs(model, arguments):
    """Whether `model` and `fit`'s `arguments` allow cached teacher
    outputs (a shared frozen prefix aside: `_shares_prefix`)."""
    x, y = arguments.get("x"), arguments.get("y")
    epochs = arguments.get("epochs", 1) - arguments.get("initial_epoch", 0)
    return (
        model.cache_teacher
        and epochs >= _epochs_that_pay(model)
        # Unequal lengths too are left to Keras, whose error names `x`
        # and `y`.
        and _same_length_arrays(x, y)
        and may_cache(model)
        and _outputs_fit_beside(model.teacher, x)
    )


def _epochs_that_pay(model):
    """The fewest epochs of a `fit` whose cache of the teacher's outputs
    saves more than it costs."""
    # Under a strategy one `predict` pass replaces the teacher's work of
    # every epoch: one epoch would only add `predict`'s overhead, two save
    # one. On one device the first epoch runs the teacher anyway, and each
    # step pays a `cond` and a gather: two-epoch MLP fits ran 0.96x as fast
    # as with the cache off in wall time (0.92x in CPU time), three-epoch
    # ones 1.12x (1.10x); the CNN's were within the noise in wall time
    # (docs/performance.md, "The cache's threshold").
    return 2 if _keras_compat.made_in_strategy_scope(model) else 3


def _same_length_arrays(*parts):
    """Whether `parts` are NumPy arrays or tensors (or structures of them)
    with one number of examples: data that `fit` reads as arrays, the same
    every epoch."""
    lengths = teacher_cache.array_lengths(parts)
    return (
        all(part is not None for part in parts)
        and bool(lengths)
        and len(set(lengths)) == 1
    )


def _outputs_fit_beside(teacher, x):
    """Whether the teacher's outputs on `x` take no more memory than `x`.

    Classifier outputs are a small fraction of their inputs; dense
    outputs with many classes (per-pixel logits) can be several times
    larger, and there the live teacher, which needs no memory per
    example, is the safer default.
    """
    spec = buffer_spec(teacher, x)
    if spec is None:
        return False
    leaves = keras.tree.flatten(x)
    outputs = sum(
        math.prod(s.shape[1:]) * _itemsize(s.dtype)
        for s in keras.tree.flatten(spec)
    )
    return outputs * int(leaves[0].shape[0]) <= sum(
        math.prod(leaf.shape) * _itemsize(leaf.dtype) for leaf in leaves
    )


def buffer_spec(teacher, x):
    """The `KerasTensor`s of the teacher's outputs on `x`, or `None` where
    they cannot be buffered (unknown per-example shapes)."""
    try:
        spec = teacher.compute_output_spec(
            keras.tree.map_structure(
                lambda a: keras.KerasTensor(
                    (None, *a.shape[1:]),
                    dtype=keras.backend.standardize_dtype(a.dtype),
                ),
                x,
            )
        )
    except Exception:  # noqa: BLE001 - any failure: keep the live teacher
        return None
    if any(None in s.shape[1:] for s in keras.tree.flatten(spec)):
        return None
    return spec


def _itemsize(dtype):
    """Bytes of one element of `dtype` (0 for strings, as TensorFlow
    counts them)."""
    name = keras.backend.standardize_dtype(dtype)
    return 0 if name == "string" else np.dtype(name).itemsize


def _with_example_index(cache, arguments):
    """`arguments` with the examples' positions packed into `x` (and into
    array `validation_data`, after the training examples'), `cache` sized
    for them all."""
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


def _with_predicted_outputs(teacher, arguments):
    """`fit`'s `arguments`, with the outputs of a `predict` pass packed
    beside the inputs (and beside array `validation_data`)."""
    arguments = dict(arguments)
    batch_size = arguments.get("batch_size")
    arguments["x"] = _predicted(teacher, arguments["x"], batch_size)
    validation = _array_validation(arguments)
    if validation is not None:
        inputs = _predicted(
            teacher,
            validation[0],
            arguments.get("validation_batch_size") or batch_size,
        )
        arguments["validation_data"] = (inputs, *validation[1:])
    return arguments


def _predicted(teacher, x, batch_size):
    """Inputs `x` packed with the teacher's outputs on them."""
    outputs = teacher_cache.predicted_outputs(
        teacher, x, batch_size=batch_size or 32
    )
    return _batch.pack(x, teacher_outputs=outputs)


def _array_validation(arguments):
    """`validation_data` where it is arrays, else `None`."""
    validation = arguments.get("validation_data")
    if (
        isinstance(validation, (tuple, list))
        and len(validation) in (2, 3)
        and _same_length_arrays(*validation[:2])
    ):
        return validation
    return None


def _length(x):
    """The number of examples in the arrays `x`."""
    return teacher_cache.array_lengths(x)[0]


def _extractors(teacher, student, names):
    """`(teacher_extractor, student_extractor)` for `distill_features`
    `names`, `(None, None)` without; raises `ValueError` if paired
    features differ in shape."""
    if names is None:
        return None, None
    student_extractor = _feature_extractor(student, names, "student")
    teacher_extractor = _feature_extractor(teacher, names, "teacher")
    teacher_features = teacher_extractor.output[1]
    for name, feature in student_extractor.output[1].items():
        if tuple(feature.shape) != tuple(teacher_features[name].shape):
            raise _checks.argument_error(
                "distill_features",
                "teacher and student features of the same shape",
                received=f"layer {name!r} gives "
                f"{tuple(teacher_features[name].shape)} in the teacher and "
                f"{tuple(feature.shape)} in the student",
            )
    return teacher_extractor, student_extractor


def _feature_extractor(model, names, role):
    """A model sharing `model`'s layers that returns `(outputs, features)`;
    `role` ("student" or "teacher") names it in the error raised for
    unknown layers."""
    try:
        features = {name: model.get_layer(name).output for name in names}
        return keras.Model(
            _symbolic(model, "input"), (_symbolic(model, "output"), features)
        )
    except (ValueError, AttributeError) as error:
        raise _checks.argument_error(
            "distill_features",
            f"names of layers of the {role}, a built Functional or "
            "Sequential model",
            received=f"distill_features={names!r} ({error})",
        ) from error


def _symbolic(model, kind):
    """`model.input` or `model.output` (`kind`), Sequential models included."""
    try:
        return getattr(model, kind)
    except AttributeError:
        # A Sequential model that was built but never called has only the
        # plural attribute, with one tensor.
        (tensor,) = getattr(model, f"{kind}s")
        return tensor
