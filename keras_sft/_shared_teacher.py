"""A teacher that shares the student's frozen weights instead of copying."""

import keras
from keras import ops

from keras_sft import _keras_compat
from keras_sft.teacher import clone_teacher


def shared_teacher(student):
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
    student's and the teacher's values are the same (`reshare`). What it
    cannot see are changes made to a shared variable outside `SFTModel`
    (`assign`, `student.fit`, loading weights into the student alone):
    those reach the teacher too.

    Example:

    ```python
    student.get_layer("dense").enable_lora(4)
    teacher = _shared_teacher.shared_teacher(student)
    ```

    Args:
        student: A built `keras.Model`.

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
                _keras_compat.replace_weight(teacher_layer, copy, weight)
    return teacher


def unshare_trained(student, teacher, strategy):
    """Copies into `teacher` the weights it shares with `student` that the
    student now trains.

    The copies take the shared variables' current values, so call this
    before training changes them; they are made in `strategy`'s scope.
    Returns whether any was copied: functions traced before then read the
    student's variables.
    """
    trained = {id(w) for w in student.trainable_weights}
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


def reshare(student, unshared):
    """Shares again the weights `unshare_all` copied where the copy holds,
    bit for bit, the student's value and the student does not train them;
    returns whether any copy stays the teacher's own."""
    trained = {id(w) for w in student.trainable_weights}
    kept = False
    for student_layer, teacher_layer, weight, copy in unshared:
        if any(weight is w for w in _shareable(student_layer, trained)) and (
            _same_bits(weight, copy)
        ):
            _keras_compat.replace_weight(teacher_layer, copy, weight)
        else:
            kept = True
    return kept


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
            with strategy.scope():
                copy = keras.Variable(
                    ops.convert_to_tensor(weight),
                    dtype=weight.dtype,
                    trainable=False,
                    name=weight.name,
                )
            _keras_compat.replace_weight(teacher_layer, weight, copy)
            unshared.append((student_layer, teacher_layer, weight, copy))
    return unshared


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
