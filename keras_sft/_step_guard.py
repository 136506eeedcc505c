"""StepGuard: a training step whose loss or gradients are not finite is
never applied.

`SFTModel` trains the user's pretrained model in place, often the only
copy they hold, so one NaN batch must not reach its weights. The guard
checks each step in one fused test (the loss, its terms, `lambda_` and the
gradients) and applies the gradients only if the step is finite and no
earlier step of this `fit` was refused. A refused step changes nothing:
neither weights nor optimizer state (moments, `iterations`); it stops the
execution, and `fit` raises a `NonFiniteLossError` naming the epoch, the
step and what was not finite.

Outside a `tf.distribute` strategy the update waits for a conditional
whose branch for a suspect step stops the execution with an in-graph
assert before any variable is written. No conditional holds the
optimizer, whose trace inside a `cond` costs a short `fit` about a tenth
of a second more. Under a strategy, whose
replicas must agree (one all-reduce of a few flags) and whose optimizer
may write from another thread, and under XLA, which drops asserts, a
`cond` applies the update or refuses the step; under XLA every later step
of the epoch is then refused and `fit` stops at the epoch's end.

Under a `keras.optimizers.LossScaleOptimizer` (`mixed_float16`),
non-finite gradients are routine: the optimizer skips such steps and
lowers its scale. There only the loss (computed in float32) is checked.
"""

import contextlib

import keras
import tensorflow as tf
from keras import ops

from keras_sft import _keras_compat
from keras_sft import terminate_on_nan

# What the guard checks, in the order its message names them: the inputs
# (looked at only once a step is not finite), then the step's own values,
# then the verdict of the batch's check (`data_checks.BatchCheck`).
_INPUTS = ("inputs `x`", "labels `y`", "`sample_weight`")
_VALUES = (
    "lambda_ (NaN, Inf or < 0)",
    "task_loss",
    "distill_loss",
    "loss",
    "gradients",
)
_INVALID = ("labels or `sample_weight` (invalid for the loss)",)
# `lambda_`, the first of the values, must also be >= 0.
_LAMBDA_MASK = (True, False, False, False)
_REFUSED = "StepGuard refused a step"
_BITS = tuple(float(2**i) for i in range(len(_INPUTS + _VALUES + _INVALID)))


def apply_gradients(
    guard, optimizer, update, data, values, *, jit_compile, valid=None
):
    """Applies `SFTModel`'s step through `guard`, or, with `guard=None` or
    nothing to train, as Keras does; Keras's Adam update in one kernel per
    weight where `_keras_compat.fused_adam` applies.

    Args:
        guard: `StepGuard` or `None`.
        optimizer: The model's optimizer.
        update: `(gradients, variables)`.
        data: `(x, y, sample_weight)` of the step.
        values: `(lambda_, terms, loss)`, `terms` the step's loss terms
            by log name (`task_loss`, `distill_loss`, ...).
        jit_compile: Bool, whether the step is compiled with XLA.
        valid: Boolean scalar or `None`: whether the batch's labels and
            sample weights are valid for the loss; a step on an invalid
            batch is refused.
    """
    gradients, variables = update
    with _keras_compat.fused_adam(optimizer, jit_compile=jit_compile):
        if guard is None or not variables:
            _keras_compat.apply_gradients(optimizer, gradients, variables)
            return
        lambda_, terms, loss = values
        guard.apply_gradients(
            optimizer,
            gradients,
            variables,
            data,
            [lambda_, terms["task_loss"], terms["distill_loss"], loss],
            jit_compile=jit_compile,
            valid=valid,
        )


def stopping(guard):
    """`guard.stopping_fit()`, or a context that does nothing without a
    guard."""
    return contextlib.nullcontext() if guard is None else guard.stopping_fit()


class StepGuard:
    """Applies a step's gradients only if the step is finite everywhere.

    Example:

    ```python
    guard = StepGuard()  # in the strategy's scope, with the model
    guard.apply_gradients(
        optimizer, gradients, variables, data, values, jit_compile=False
    )
    model.fit(**guard.with_callback(fit_arguments))
    ```
    """

    def __init__(self):
        # The steps this `fit` ran, and once one is refused: the bits of
        # what made it not finite, and its index. All replicas agree on
        # them, so the first one's are kept.
        self.steps = _state("step_guard_steps", 0)
        self.refusal = _state("step_guard_refusal", [0, 0])
        # Where the current epoch of `fit` began, for the error's message.
        self.epoch = 0
        self.steps_before_epoch = 0

    def apply_gradients(
        self,
        optimizer,
        gradients,
        variables,
        data,
        values,
        *,
        jit_compile,
        valid=None,
    ):
        """Applies `gradients` with `optimizer` unless the step is refused.

        Args:
            optimizer: The model's optimizer.
            gradients: List of the gradients of `variables`.
            variables: List of the trained variables.
            data: `(x, y, sample_weight)` of the step.
            values: List of scalars in the order of `_VALUES` but the
                gradients: `lambda_`, `task_loss`, `distill_loss`, loss.
            jit_compile: Bool, whether the step is compiled with XLA
                (which drops the assert that stops a refused step).
            valid: Boolean scalar or `None`: whether the batch is valid
                for the loss (`data_checks.BatchCheck`).
        """
        values = [ops.cast(v, "float32") for v in values]
        checked = gradients
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            checked = []
        # One scalar, finite only if every value and every gradient
        # element is and `lambda_` >= 0 (the square root of a negative is
        # NaN): one pass over each gradient, no temporary. A sum that is
        # not finite (or that overflows) makes the step a suspect, looked
        # at exactly in a cond, which no finite step runs; no collective
        # runs inside it.
        lambda_, *losses = values
        total = ops.sum(
            ops.stack([ops.sqrt(lambda_), *losses, *_sums(checked)])
        )
        # Under a strategy, even of one replica, the optimizer may write
        # through `merge_call` on another thread, out of reach of a
        # control dependency.
        fine = ops.isfinite(total)
        if valid is not None:
            fine = ops.logical_and(fine, valid)
        update = (optimizer, gradients, variables)

        def flags():
            return _flags(data, values, checked, valid)

        if jit_compile or tf.distribute.has_strategy():
            self._apply_agreed(fine, update, flags)
        else:
            self._apply_or_stop(fine, update, flags)
        self.steps.assign_add(1)

    def _apply_or_stop(self, fine, update, flags):
        """No strategy: the update waits for a cond whose branch for a
        suspect step checks it exactly (`flags()`), records the refusal
        and stops the execution; a finite step runs nothing else."""
        optimizer, gradients, variables = update

        def refuse():
            # The cond's output must wait for the stop: a lowered cond
            # passes on its constant output as soon as it exists.
            self._record(flags())
            with tf.control_dependencies([self._stop()]):
                return tf.identity(False)

        passed = ops.cond(fine, lambda: ops.convert_to_tensor(True), refuse)
        with tf.control_dependencies([passed]):
            optimizer.apply_gradients(zip(gradients, variables, strict=True))

    def _apply_agreed(self, fine, update, flags):
        """A strategy or XLA: the replicas agree on the step's flags
        (`flags()` for a suspect step), and a cond applies the update or
        refuses the step."""
        flags = ops.cond(fine, lambda: ops.zeros((len(_BITS),)), flags)
        context = tf.distribute.get_replica_context()
        if context.num_replicas_in_sync > 1:
            flags = context.all_reduce("sum", flags)
        apply = ops.logical_and(
            ops.max(flags) == 0, ops.convert_to_tensor(self.refusal)[0] == 0
        )
        _apply_if(apply, *update, self._refuse, flags)

    def _record(self, flags):
        """Keeps the first refusal of this `fit`: the bits of `flags` (none
        for a finite step) and the step's index."""
        refusal = ops.convert_to_tensor(self.refusal)
        code = ops.cast(ops.sum(ops.sign(flags) * _BITS), "int64")
        self.refusal.assign(
            ops.where(
                refusal[0] == 0,
                ops.stack([code, self.steps.value]),
                refusal,
            )
        )

    def _refuse(self, flags):
        """Records the refusal and stops the execution, with no per-step
        read on the host."""
        self._record(flags)
        self._stop()

    def _stop(self):
        """The assert that stops the execution once a refusal is recorded.

        The read orders it after the assignment. XLA drops asserts: there
        the callback stops `fit` at the epoch's end, every later step
        refused.
        """
        return tf.debugging.Assert(
            ops.convert_to_tensor(self.refusal)[0] == 0, [_REFUSED]
        )

    @contextlib.contextmanager
    def stopping_fit(self):
        """Turns a refusal into the guard's `NonFiniteLossError`: the
        step's own stop or, under XLA, which drops it, the refusal found
        after `train_on_batch`."""
        try:
            yield
        except tf.errors.InvalidArgumentError as error:
            if _REFUSED not in error.message:
                raise
        if int(self.refusal.numpy()[0]):
            error = self._error()
            # A later `train_on_batch` is not refused for this step.
            self.refusal.assign([0, 0])
            raise error

    def _error(self):
        code, step = (int(v) for v in self.refusal.numpy())
        names = [
            name
            for i, name in enumerate(_INPUTS + _VALUES + _INVALID)
            if code & (1 << i)
        ]
        return terminate_on_nan.non_finite_error(
            self.epoch,
            step - self.steps_before_epoch,
            ", ".join(names),
            "the step was not applied and training stopped; the student "
            "keeps the weights of the last finite step",
        )

    def with_callback(self, arguments):
        """`fit`'s `arguments` with, after the user's callbacks, one that
        resets the guard and stops `fit` at a refusal."""
        callbacks = list(arguments.get("callbacks") or [])
        return {
            **arguments,
            "callbacks": [*callbacks, _StopAtRefusedStep(self)],
        }


def _floats(tensors):
    """The floating tensors of `tensors` (a structure, `None`s skipped)."""
    leaves = [
        t.values if isinstance(t, tf.IndexedSlices) else t
        for t in keras.tree.flatten(tensors)
        if t is not None
    ]
    return [t for t in leaves if t.dtype.is_floating]


def _state(name, value):
    """An int64 variable of the guard."""
    return keras.Variable(
        value,
        dtype="int64",
        trainable=False,
        aggregation="only_first_replica",
        name=name,
    )


def _sums(tensors):
    """The float32 sums of the elements of each tensor of `tensors`."""
    return [ops.cast(ops.sum(t), "float32") for t in _floats(tensors)]


def _flags(data, values, gradients, valid):
    """What is not finite, exactly, in the order of `_INPUTS + _VALUES`,
    then whether the batch is invalid: 1.0 for each, else 0.0."""
    values = ops.stack(values)
    bad_values = ops.logical_or(
        ops.logical_not(ops.isfinite(values)),
        ops.logical_and(ops.less(values, 0.0), _LAMBDA_MASK),
    )
    bad_inputs = ops.stack([ops.logical_not(_all_finite(t)) for t in data])
    bad_gradients = ops.logical_not(_all_finite(gradients))[None]
    invalid = ops.logical_not(True if valid is None else valid)[None]
    return ops.cast(
        ops.concatenate([bad_inputs, bad_values, bad_gradients, invalid]),
        "float32",
    )


def _all_finite(tensors):
    """Whether every element of `tensors` is finite (a scalar)."""
    leaves = _floats(tensors)
    if not leaves:
        return ops.convert_to_tensor(True)
    return ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in leaves]))


def _apply_if(apply, optimizer, gradients, variables, refuse, flags):
    """Applies the gradients where `apply` (equal on all replicas) holds,
    else calls `refuse(flags)`.

    As `keras.optimizers.LossScaleOptimizer` does: a cond in the replica
    context where the strategy needs no merge call, else a cond in the
    cross-replica context, since a replica-context cond cannot hold the
    optimizer's own merge call.
    """

    def apply_fn(gradients):
        optimizer.apply_gradients(zip(gradients, variables, strict=True))

    if _keras_compat.strategy_supports_no_merge_call():
        ops.cond(apply, lambda: apply_fn(gradients), lambda: refuse(flags))
        return

    # Each replica's gradients go through `merge_call`'s arguments, so that
    # each replica applies its own (a closure would hold the first's).
    def cross_replica(strategy, apply, gradients, flags):
        first = strategy.experimental_local_results
        ops.cond(
            first(apply)[0],
            lambda: strategy.extended.call_for_each_replica(
                apply_fn, args=(gradients,)
            ),
            lambda: refuse(first(flags)[0]),
        )

    tf.distribute.get_replica_context().merge_call(
        cross_replica, args=(apply, gradients, flags)
    )


class _StopAtRefusedStep(keras.callbacks.Callback):
    """Resets the guard when training begins, notes where each epoch
    starts, and raises at the epoch's end if a step was refused (where
    XLA dropped the step's own stop). It has no per-batch hook, so Keras
    keeps dispatching batches asynchronously."""

    def __init__(self, guard):
        super().__init__()
        self._guard = guard

    def on_train_begin(self, logs=None):
        self._guard.steps.assign(0)
        self._guard.refusal.assign([0, 0])

    def on_epoch_begin(self, epoch, logs=None):
        self._guard.epoch = epoch
        self._guard.steps_before_epoch = int(self._guard.steps.numpy())

    def on_epoch_end(self, epoch, logs=None):
        if int(self._guard.refusal.numpy()[0]):
            raise self._guard._error()
