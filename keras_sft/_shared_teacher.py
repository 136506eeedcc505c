"""A teacher that shares the student's frozen weights instead of copying."""

import weakref

import keras
import tensorflow as tf
from keras import ops

from keras_sft import _keras_compat
from keras_sft.teacher import clone_teacher


def shared_teacher(student, *, on_unshare=None):
    """Returns a frozen teacher of `student` that reuses its frozen weights.

    The teacher is `keras_sft.clone_teacher(student)`, then each of its
    weights that training cannot change is replaced by the student's own
    variable, so the teacher owns only the memory of what the student
    trains:

    - weights the student does not train (those of layers with
      `trainable=False`, and the base kernels of layers with Keras LoRA
      enabled), with the moving statistics of frozen `BatchNormalization`
      layers, which such layers never update;
    - a layer with LoRA enabled (`layer.enable_lora(rank)`) whose adapters
      are still zero (as `enable_lora` makes them) gets, in the teacher, no
      adapters: it computes with the student's frozen base weights alone,
      exactly as the model before `enable_lora`. Where the adapters are
      not zero (already trained), the teacher keeps a full copy of the
      layer, with the adapters merged, as `clone_teacher` makes it.

    Shared weights stop being shared when the student starts to train them
    (`layer.trainable = True` after freezing, the usual
    freeze-then-unfreeze recipe): `unshare_trained`, which `SFTModel`
    calls when its `trainable` is set and before each `fit` builds its
    training step, copies them into the teacher first, while they still
    hold the pretrained values. Weights written into the `SFTModel`
    (`set_weights`, `load_weights`, the callbacks that restore) reach the
    teacher's own copies (`unshare_all`), and are shared again where the
    student's and the teacher's values are the same (`reshare`). So do
    the teacher's values of a `tf.train.Checkpoint` restored into the
    `SFTModel`, through stand-ins at the teacher's places of the weights
    it shares (`reshare_restored` shares them again).

    A shared variable written outside `SFTModel` through Keras (`assign`,
    `assign_add`, `student.set_weights`, `student.load_weights`, the
    moving statistics of a `BatchNormalization` layer unfrozen and run in
    training) is copied on write: before its first write that changes
    it, each teacher still sharing it gets its own copy holding the value
    before the write, and `on_unshare` is called (the `SFTModel` drops
    the functions it traced with the shared variable). So are the writes
    to the TensorFlow variable behind it: an optimizer's (`student.fit`
    after `layer.trainable = True` on the student's layer, without
    `SFTModel` seeing the change; dense or sparse, on one device or on
    each replica under a strategy, seen once while the step is traced)
    and `tf.train.Checkpoint` restoring into the student. Writing the
    value it holds keeps it shared. Unseen are the TensorFlow variable's
    other writes (`scatter_nd_update`, `scatter_max`, ...), which no
    optimizer or restore of Keras 3.15 makes.

    Example:

    ```python
    student.get_layer("dense").enable_lora(4)
    teacher = _shared_teacher.shared_teacher(student)
    ```

    Args:
        student: A built `keras.Model`.
        on_unshare: A bound method, held weakly, called after a write to
            the student gave the teacher its own copy of a variable.
            Defaults to `None`.

    Returns:
        A `keras.Model` with `trainable=False`.
    """
    teacher = clone_teacher(student)
    pairs = _layer_pairs(student, teacher)
    if pairs is None:
        return teacher
    trained = {id(w) for w in student.trainable_weights}
    for student_layer, teacher_layer in pairs:
        adapters = _keras_compat.lora_adapters(student_layer)
        # `enable_lora` starts the `_b` factor at zero, so that the adapted
        # layer computes what the base layer does until it trains.
        if any(a.name.endswith("_b") and _nonzero(a) for a in adapters):
            continue
        if adapters:
            _keras_compat.disable_lora(teacher_layer)
        teacher_weights = {
            w.name: w
            for ws in _keras_compat.own_weights(teacher_layer)
            for w in ws
        }
        for weight in _shareable(student_layer, trained):
            copy = teacher_weights.get(weight.name)
            if (
                copy is not None
                and copy.shape == weight.shape
                and copy.dtype == weight.dtype
            ):
                _share(
                    (student_layer, teacher_layer, weight, copy),
                    teacher,
                    on_unshare,
                )
    return teacher


def unshare_trained(student, teacher, strategy, *, trained):
    """Copies into `teacher` the weights it shares with `student` that the
    student now trains (those among `trained`).

    The copies take the shared variables' current values, so call this
    before training changes them; they are made in `strategy`'s scope.
    Returns whether any was copied: functions traced before then read the
    student's variables.
    """
    trained = {id(w) for w in trained}
    return bool(
        _unshare(
            student,
            teacher,
            strategy,
            lambda layer, weight: all(
                weight is not w for w in _shareable(layer, trained)
            ),
        )
    )


def unshare_all(student, teacher, strategy):
    """Copies into `teacher` every weight it shares with `student`.

    Call this before writing weights into a model that holds both (the
    teacher's entries of a weights list or file then reach the teacher's
    own copies, and the student's the student), then `reshare` with what
    it returns. The copies are made in `strategy`'s scope.
    """
    return _unshare(student, teacher, strategy, lambda layer, weight: True)


def reshare(student, teacher, unshared, *, trained, on_unshare=None):
    """Shares again the weights `unshare_all` copied into `teacher` where
    the copy holds, bit for bit, the student's value and the student does
    not train them (they are not among `trained`), copied on write as
    `shared_teacher` makes them (with `on_unshare`); returns whether any
    copy stays the teacher's own."""
    trained = {id(w) for w in trained}
    kept = False
    for entry in unshared:
        student_layer, teacher_layer, weight, copy = entry
        if any(weight is w for w in _shareable(student_layer, trained)) and (
            _same_bits(weight, copy)
        ):
            _share(entry, teacher, on_unshare)
        else:
            kept = True
    return kept


def reshare_restored(student, teacher, *, trained, on_unshare=None):
    """`reshare` of the copies that restoring a `tf.train.Checkpoint`
    gave `teacher` since the last call; returns whether any was shared
    again (functions traced since read the copy).

    Call it where no checkpoint is being restored (at the start of a
    `fit`): while one is, the student's variables may not hold their
    restored values yet.
    """
    restored = [
        entry
        for entry in _RESTORED.pop(teacher, [])
        if _holds(entry[1], entry[3])
    ]
    reshare(student, teacher, restored, trained=trained, on_unshare=on_unshare)
    return any(not _holds(entry[1], entry[3]) for entry in restored)


def owned_weights(student, teacher):
    """The weights of `teacher` that are not `student`'s."""
    shared = {id(w) for w in student.weights}
    return [w for w in teacher.weights if id(w) not in shared]


def _layer_pairs(student, teacher):
    """Each layer of `student` with the same layer of `teacher`, or `None`
    where the two models are not built alike."""
    student_layers = _keras_compat.all_layers(student)
    teacher_layers = _keras_compat.all_layers(teacher)
    if len(student_layers) != len(teacher_layers) or any(
        type(s) is not type(t) or s.name != t.name
        for s, t in zip(student_layers, teacher_layers, strict=True)
    ):
        return None
    return list(zip(student_layers, teacher_layers, strict=True))


def _shareable(layer, trained):
    """The own weights of `layer` that training the student cannot change."""
    weights, others = _keras_compat.own_weights(layer)
    adapters = {id(w) for w in _keras_compat.lora_adapters(layer)}
    shareable = [
        w for w in weights if id(w) not in trained and id(w) not in adapters
    ]
    # A frozen BatchNormalization runs in inference mode in training too,
    # so its moving statistics never change.
    if isinstance(layer, keras.layers.BatchNormalization) and not (
        layer.trainable
    ):
        shareable += others
    return shareable


def _shared(student_layer, teacher_layer):
    """The own weights of `teacher_layer` that are `student_layer`'s."""
    student_weights = {
        id(w) for ws in _keras_compat.own_weights(student_layer) for w in ws
    }
    return [
        w
        for ws in _keras_compat.own_weights(teacher_layer)
        for w in ws
        if id(w) in student_weights
    ]


def _unshare(student, teacher, strategy, condition):
    """Gives `teacher` its own copy of each weight it shares with a
    `student` layer where `condition(layer, weight)` holds; returns
    `(student_layer, teacher_layer, weight, copy)` for each."""
    unshared = []
    for student_layer, teacher_layer in _layer_pairs(student, teacher) or []:
        for weight in _shared(student_layer, teacher_layer):
            if not condition(student_layer, weight):
                continue
            copy = _own_copy(teacher_layer, weight, strategy)
            unshared.append((student_layer, teacher_layer, weight, copy))
    return unshared


def _own_copy(teacher_layer, weight, strategy):
    """Gives `teacher_layer` its own copy of `weight`, made in
    `strategy`'s scope; returns the copy."""
    with strategy.scope():
        copy = keras.Variable(
            ops.convert_to_tensor(weight),
            dtype=weight.dtype,
            trainable=False,
            name=weight.name,
        )
    _keras_compat.replace_weight(teacher_layer, weight, copy)
    return copy


def _share(entry, teacher, on_unshare):
    """Makes `teacher_layer` of `teacher` compute with the student's
    `weight` instead of its `copy`, for `entry = (student_layer,
    teacher_layer, weight, copy)`: copied on write, and held apart in
    checkpoints."""
    _, teacher_layer, weight, copy = entry
    _keras_compat.replace_weight(teacher_layer, copy, weight)
    _copy_on_write(weight, teacher, teacher_layer, on_unshare)
    _keras_compat.set_checkpoint_stand_in(
        teacher_layer, weight, _TeacherWeight(entry, teacher, on_unshare)
    )


def _holds(layer, variable):
    """Whether `variable` is one of `layer`'s own weights."""
    return any(
        weight is variable
        for weights in _keras_compat.own_weights(layer)
        for weight in weights
    )


# The copies restoring a checkpoint gave each teacher, by teacher, for
# `reshare_restored`.
_RESTORED = weakref.WeakKeyDictionary()


class _TeacherWeight(_keras_compat.Trackable):
    """What a `tf.train.Checkpoint` finds at the place of a weight that a
    teacher layer shares (or once shared) with its student: the layer's
    variable there when saved; when restored, the layer's own copy, made
    first if the layer still shares the weight.

    Checkpoints follow each layer's dependencies. Were the shared variable
    itself at the teacher's place, a checkpoint would see one variable at
    two places, and restoring it would write the checkpoint's student
    value and teacher value (two, where the layer was unfrozen after it
    saved) into the one variable, one over the other. Sharing the copy
    again, where it holds the student's restored value, is left to
    `reshare_restored`.
    """

    def __init__(self, entry, teacher, on_unshare):
        # Weakly, as copy on write holds them: a checkpoint's stand-in must
        # not keep the models alive.
        student_layer, teacher_layer, weight, _ = entry
        self._layers = (weakref.ref(student_layer), weakref.ref(teacher_layer))
        self._weight = weakref.ref(weight)
        self._teacher = weakref.ref(teacher)
        self._on_unshare = (
            None if on_unshare is None else weakref.WeakMethod(on_unshare)
        )
        # The place of the weight in the layer's lists, which its own copy
        # takes.
        self._place = next(
            (i, j)
            for i, weights in enumerate(
                _keras_compat.own_weights(teacher_layer)
            )
            for j, w in enumerate(weights)
            if w is weight
        )

    def _serialize_to_tensors(self):
        return self._variable()._serialize_to_tensors()

    def _variable(self):
        """The teacher layer's variable at the weight's place."""
        i, j = self._place
        return _keras_compat.own_weights(self._layers[1]())[i][j]

    def _restore_from_tensors(self, restored_tensors):
        student_layer, teacher_layer = (ref() for ref in self._layers)
        weight, teacher = self._weight(), self._teacher()
        copy = self._variable()
        # Unless the layer has had its own copy since the checkpoint began
        # to restore (the student's value, restored first, copied on write).
        if copy is weight:
            copy = _own_copy(teacher_layer, weight, teacher.distribute_strategy)
            callback = self._on_unshare and self._on_unshare()
            if callback is not None:
                callback()
        _RESTORED.setdefault(teacher, []).append(
            (student_layer, teacher_layer, weight, copy)
        )
        return copy._restore_from_tensors(restored_tensors)


def _copy_on_write(weight, teacher, teacher_layer, on_unshare):
    """Makes the first write that changes `weight`, which `teacher_layer`
    of `teacher` shares, give that layer its own copy first."""
    hook = _keras_compat.before_writes(weight)
    if hook is None:
        hook = _CopyOnWrite(weight)
        _keras_compat.set_before_writes(weight, hook)
    hook.add(teacher, teacher_layer, on_unshare)


class _CopyOnWrite:
    """Called before each write to a student variable that teachers
    share: at the first that changes it, gives each teacher layer still
    sharing it its own copy, holding the value before the write, and
    stops watching the variable."""

    def __init__(self, variable):
        # Weakly, as each teacher: the student must not keep alive the
        # models made from it (several may share its variables).
        self._variable = weakref.ref(variable)
        self._sharers = []

    def add(self, teacher, teacher_layer, on_unshare):
        """Watches for `teacher_layer` of `teacher` too."""
        # Models made from one student one after another leave no trail.
        self._sharers = [s for s in self._sharers if s[0]() is not None]
        if any(
            t() is teacher and layer() is teacher_layer
            for t, layer, _ in self._sharers
        ):
            return
        self._sharers.append(
            (
                weakref.ref(teacher),
                weakref.ref(teacher_layer),
                None if on_unshare is None else weakref.WeakMethod(on_unshare),
            )
        )

    def __call__(self, value):
        variable = self._variable()
        # An eager write of the value held (`set_weights` with the
        # student's own weights) changes nothing: the variable stays
        # shared. While a function is traced the value is not known yet.
        if not tf.inside_function() and _same_bits(variable, value):
            return
        replica = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and replica is not None:
            # In a replica's step (`student.fit` under a strategy) the
            # strategy's copies are made across replicas: each replica's
            # write waits here, so the hook stays until all have come.
            replica.merge_call(lambda strategy: self._unshare(variable))
        else:
            # Eager, or across replicas: an optimizer's update of one
            # replica's component; the copy is mirrored on every replica.
            self._unshare(variable)
        _keras_compat.set_before_writes(variable, None)

    def _unshare(self, variable):
        """Gives each teacher layer still sharing `variable` its own copy
        of its current value."""
        # While a function is traced (a moving statistic's or an
        # optimizer's update), it has not run: the variable still holds
        # the value before the write, which the copy takes eagerly.
        with tf.init_scope():
            for teacher, teacher_layer, on_unshare in self._sharers:
                teacher, teacher_layer = teacher(), teacher_layer()
                if teacher is None or not _holds(teacher_layer, variable):
                    # Gone, or no longer sharing it (`SFTModel`'s own
                    # writes unshare first).
                    continue
                _own_copy(teacher_layer, variable, teacher.distribute_strategy)
                callback = on_unshare and on_unshare()
                if callback is not None:
                    callback()


def _same_bits(variable, other):
    """Whether `variable` and `other` hold the same bytes."""
    # Bytes, not values: -0.0 and 0.0 differ, and a NaN equals itself.
    return (
        ops.convert_to_numpy(variable).tobytes()
        == ops.convert_to_numpy(other).tobytes()
    )


def _nonzero(variable):
    """Whether `variable` holds a value other than zero."""
    return bool(ops.convert_to_numpy(ops.any(ops.not_equal(variable, 0))))
