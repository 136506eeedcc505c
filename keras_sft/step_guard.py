"""StepGuard: a training step whose loss or gradients are not finite is
never applied.

`SFTModel` trains the user's pretrained model in place, often the only
copy they hold, so one NaN batch must not reach its weights. The guard
checks each step in one fused test (the loss, its terms, `lambda_` and the
gradients), agrees on the result across replicas with one all-reduce
(none on one device), and applies the gradients only if every replica's
step is finite and no earlier step of this `fit` was refused. A refused
step changes nothing: neither weights nor optimizer state (moments,
`iterations`). A refusal is kept in a variable, so that the later steps
of the same execution (`steps_per_execution > 1`) are refused too, and
the step stops the execution at once; `fit` raises a
`NonFiniteLossError` naming the epoch, the step and what was not finite.

Under a `keras.optimizers.LossScaleOptimizer` (`mixed_float16`),
non-finite gradients are routine: the optimizer skips such steps and
lowers its scale. There only the loss (computed in float32) is checked.
"""

import contextlib

import keras
import tensorflow as tf
from keras import ops

from keras_sft import keras_compat
from keras_sft import terminate_on_nan

# What the guard checks, in the order its message names them: the inputs
# (looked at only once a step is not finite), then the step's own values.
_INPUTS = ("inputs `x`", "labels `y`", "`sample_weight`")
_VALUES = (
    "lambda_ (NaN, Inf or < 0)",
    "task_loss",
    "distill_loss",
    "loss",
    "gradients",
)
# `lambda_`, the first of the values, must also be >= 0.
_LAMBDA_MASK = (True, False, False, False)
_REFUSED = "StepGuard refused a step"
_BITS = tuple(float(2**i) for i in range(len(_INPUTS + _VALUES)))


def apply_gradients(guard, optimizer, update, data, values):
    """Applies `SFTModel`'s step through `guard`, or, with `guard=None` or
    nothing to train, as Keras does.

    Args:
        guard: `StepGuard` or `None`.
        optimizer: The model's optimizer.
        update: `(gradients, variables)`.
        data: `(x, y, sample_weight)` of the step.
        values: `(lambda_, terms, loss)`, `terms` the step's loss terms
            by log name (`task_loss`, `distill_loss`, ...).
    """
    gradients, variables = update
    if guard is None or not variables:
        keras_compat.apply_gradients(optimizer, gradients, variables)
        return
    lambda_, terms, loss = values
    guard.apply_gradients(
        optimizer,
        gradients,
        variables,
        data,
        [lambda_, terms["task_loss"], terms["distill_loss"], loss],
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
    guard.apply_gradients(optimizer, gradients, variables, data, values)
    model.fit(**guard.with_callback(fit_arguments))
    ```
    """

    def __init__(self):
        # [steps applied in this `fit`, bits of what made a step not
        # finite]; all replicas agree on it, so the first one's is kept.
        self.state = keras.Variable(
            [0, 0],
            dtype="int64",
            trainable=False,
            aggregation="only_first_replica",
            name="step_guard_state",
        )
        # Where the current epoch of `fit` began, for the error's message.
        self.epoch = 0
        self.applied_before_epoch = 0

    def apply_gradients(self, optimizer, gradients, variables, data, values):
        """Applies `gradients` with `optimizer` unless the step is refused.

        Args:
            optimizer: The model's optimizer.
            gradients: List of the gradients of `variables`.
            variables: List of the trained variables.
            data: `(x, y, sample_weight)` of the step.
            values: List of scalars in the order of `_VALUES` but the
                gradients: `lambda_`, `task_loss`, `distill_loss`, loss.
        """
        values = ops.stack([ops.cast(v, "float32") for v in values])
        bad = ops.logical_or(
            ops.logical_not(ops.isfinite(values)),
            ops.logical_and(ops.less(values, 0.0), _LAMBDA_MASK),
        )
        checked = gradients
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            checked = []
        # One pass over each gradient, with no temporary: a sum is finite
        # only if every element is. A sum that is not (or that overflows)
        # makes the step a suspect, looked at exactly in the cond below,
        # which no finite step runs; no collective runs inside it.
        suspect = ops.logical_or(
            ops.any(bad), ops.logical_not(ops.isfinite(_sum(checked)))
        )
        exact = tf.cond(
            suspect,
            lambda: ops.logical_not(
                ops.stack([_all_finite(t) for t in (*data, checked)])
            ),
            lambda: ops.zeros((len(_INPUTS) + 1,), "bool"),
        )
        flags = ops.cast(
            ops.concatenate([exact[:-1], bad, exact[-1:]]), "float32"
        )
        context = tf.distribute.get_replica_context()
        if context.num_replicas_in_sync > 1:
            flags = context.all_reduce("sum", flags)
        code = ops.cast(ops.sum(ops.sign(flags) * _BITS), "int64")
        state = ops.convert_to_tensor(self.state)
        refused_before = state[1] != 0
        apply = ops.logical_and(code == 0, ops.logical_not(refused_before))
        self.state.assign(
            ops.where(
                refused_before,
                state,
                ops.stack([state[0] + ops.cast(apply, "int64"), code]),
            )
        )
        _apply_if(apply, optimizer, gradients, variables)
        # Stops the execution at once, with no per-step read on the host;
        # the read orders it after the assignment. XLA drops asserts: there
        # the callback stops `fit` at the epoch's end, every later step
        # refused.
        tf.debugging.Assert(
            ops.convert_to_tensor(self.state)[1] == 0, [_REFUSED]
        )

    @contextlib.contextmanager
    def stopping_fit(self):
        """Turns the step's own stop into the guard's `NonFiniteLossError`."""
        try:
            yield
        except tf.errors.InvalidArgumentError as error:
            if _REFUSED not in error.message:
                raise
            raise self._error() from None

    def _error(self):
        applied, code = (int(v) for v in self.state.numpy())
        names = [
            name for i, name in enumerate(_INPUTS + _VALUES) if code & (1 << i)
        ]
        return terminate_on_nan.non_finite_error(
            self.epoch,
            applied - self.applied_before_epoch,
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


def _sum(tensors):
    """The float32 sum of all the elements of `tensors`."""
    sums = [ops.cast(ops.sum(t), "float32") for t in _floats(tensors)]
    return ops.sum(ops.stack(sums)) if sums else ops.zeros(())


def _all_finite(tensors):
    """Whether every element of `tensors` is finite; a scalar, with one
    reduction per tensor."""
    leaves = _floats(tensors)
    if not leaves:
        return ops.convert_to_tensor(True)
    return ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in leaves]))


def _apply_if(apply, optimizer, gradients, variables):
    """Applies the gradients where `apply` (equal on all replicas) holds.

    As `keras.optimizers.LossScaleOptimizer` does: a cond in the replica
    context where the strategy needs no merge call, else a cond in the
    cross-replica context, since a replica-context cond cannot hold the
    optimizer's own merge call.
    """

    def apply_fn(gradients):
        optimizer.apply_gradients(zip(gradients, variables, strict=True))

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        ops.cond(apply, lambda: apply_fn(gradients), lambda: None)
        return

    # Each replica's gradients go through `merge_call`'s arguments, so that
    # each replica applies its own (a closure would hold the first's).
    def cross_replica(strategy, apply, gradients):
        apply = strategy.experimental_local_results(apply)[0]
        ops.cond(
            apply,
            lambda: strategy.extended.call_for_each_replica(
                apply_fn, args=(gradients,)
            ),
            lambda: None,
        )

    tf.distribute.get_replica_context().merge_call(
        cross_replica, args=(apply, gradients)
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
        self._guard.state.assign([0, 0])

    def on_epoch_begin(self, epoch, logs=None):
        self._guard.epoch = epoch
        self._guard.applied_before_epoch = int(self._guard.state.numpy()[0])

    def on_epoch_end(self, epoch, logs=None):
        if int(self._guard.state.numpy()[1]):
            raise self._guard._error()
