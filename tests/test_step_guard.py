import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from keras_sft._step_guard import StepGuard
from keras_sft.terminate_on_nan import NonFiniteLossError
from tests import helpers

_REFUSED = (
    r"Non-finite {what} at epoch 1, step 3: the step was not applied and "
    r"training stopped; the student keeps the weights of the last finite "
    r"step\. Lower the learning rate or lambda_"
)


def _model(lambda_=1.0, jit_compile="auto", activation="relu", **kwargs):
    model = keras_sft.SFTModel(
        helpers.mlp(activation=activation), lambda_=lambda_, **kwargs
    )
    model.compile(optimizer="adam", jit_compile=jit_compile)
    return model


def _state(model):
    """The student's weights and the optimizer's variables, as arrays."""
    return [
        v.numpy().copy()
        for v in [*model.student.weights, *model.optimizer.variables]
    ]


def _batches(*arrays):
    """A dataset of `arrays` in batches of 8, in order."""
    return tf.data.Dataset.from_tensor_slices(arrays).batch(8)


def _assert_refused_third_step(
    arrays,
    *,
    lambda_=1.0,
    what=None,
    error=None,
    jit_compile="auto",
    activation="relu",
):
    """Training on 32 examples in batches of 8 stops at step 3 and keeps
    the state of a run stopped after step 2 (Adam's moments and
    iterations included), with the guard's error naming `what`, or
    `error`, `(type, pattern)`."""
    reference = _model(lambda_, jit_compile, activation)
    reference.fit(_batches(*arrays).take(2), epochs=1, shuffle=False, verbose=0)
    model = _model(lambda_, jit_compile, activation)
    kind, pattern = error or (NonFiniteLossError, _REFUSED.format(what=what))
    with pytest.raises(kind, match=pattern):
        model.fit(_batches(*arrays), epochs=2, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2
    for a, b in zip(_state(model), _state(reference), strict=True):
        np.testing.assert_array_equal(a, b)


def test_nan_input_is_never_applied():
    x, y, _ = helpers.classification_data(n=32)
    x[20, 0] = np.nan
    # A linear hidden layer: the NaN reaches every logit of its example
    # through products and sums, which propagate NaN on every instruction
    # set, so each value of the step is NaN.
    _assert_refused_third_step(
        (x, y),
        what=r"inputs `x`, task_loss, distill_loss, loss, gradients",
        activation=None,
    )


def test_nan_input_through_relu_is_never_applied():
    x, y, _ = helpers.classification_data(n=32)
    x[20, 0] = np.nan
    # Whether ReLU's `max(NaN, 0)` is NaN or 0 depends on the instruction
    # set, so the losses may stay finite; the first kernel's gradient
    # multiplies the NaN input and is NaN either way.
    _assert_refused_third_step(
        (x, y),
        what=r"inputs `x`, (task_loss, distill_loss, loss, )?gradients",
    )


def test_xla_drops_the_stop_and_refuses_every_later_step_of_the_epoch():
    x, y, _ = helpers.classification_data(n=32)
    x[20, 0] = np.nan
    _assert_refused_third_step(
        (x, y),
        what=r"inputs `x`, task_loss, distill_loss, loss, gradients",
        jit_compile=True,
        activation=None,
    )


@pytest.mark.parametrize("jit_compile", [False, True])
def test_train_on_batch_refuses_a_nan_batch_with_the_guards_error(
    jit_compile,
):
    x, y, _ = helpers.classification_data(n=8)
    model = _model(jit_compile=jit_compile)
    model.train_on_batch(x, y)
    before = _state(model)
    nan_x = x.copy()
    nan_x[3, 0] = np.nan
    with pytest.raises(NonFiniteLossError, match=r"Non-finite inputs `x`"):
        model.train_on_batch(nan_x, y)
    for a, b in zip(_state(model), before, strict=True):
        np.testing.assert_array_equal(a, b)
    # The refusal belonged to that batch: the next one trains.
    model.train_on_batch(x, y)
    assert int(model.optimizer.iterations.numpy()) == 2


def _guarded_step(variable, gradient, valid=None):
    """One `StepGuard` step of SGD(1.0) on `variable`, as `fit` runs it,
    on a batch that its check found `valid`."""
    optimizer = keras.optimizers.SGD(1.0)
    optimizer.build([variable])
    guard = StepGuard()
    data = (tf.zeros((1, 2)), tf.zeros((1,), "int32"), None)

    @tf.function
    def step():
        guard.apply_gradients(
            optimizer,
            [tf.constant(gradient, "float32")],
            [variable],
            data,
            [1.0, 0.5, 0.5, 1.0],
            valid=valid,
            jit_compile=False,
        )

    with guard.stopping_fit():
        step()


def test_a_finite_step_whose_gradient_sum_overflows_is_applied():
    variable = keras.Variable(np.zeros(2, "float32"))
    # 3e38 + 3e38 overflows float32; each element is finite.
    _guarded_step(variable, [3e38, 3e38])
    np.testing.assert_array_equal(
        variable.numpy(), np.full(2, -3e38, "float32")
    )


def test_a_gradient_with_one_nan_is_refused_and_named():
    variable = keras.Variable(np.zeros(2, "float32"))
    with pytest.raises(
        NonFiniteLossError, match=r"^Non-finite gradients at epoch 1, step 1:"
    ):
        _guarded_step(variable, [np.nan, 0.0])
    np.testing.assert_array_equal(variable.numpy(), [0.0, 0.0])


def test_a_finite_step_on_an_invalid_batch_is_refused_and_named():
    variable = keras.Variable(np.zeros(2, "float32"))
    with pytest.raises(
        NonFiniteLossError,
        match=r"^Non-finite labels or `sample_weight` \(invalid for the "
        r"loss\) at epoch 1, step 1:",
    ):
        _guarded_step(variable, [1.0, 2.0], valid=tf.constant(False))
    np.testing.assert_array_equal(variable.numpy(), [0.0, 0.0])
    _guarded_step(variable, [1.0, 2.0], valid=tf.constant(True))
    np.testing.assert_array_equal(variable.numpy(), [-1.0, -2.0])


def test_one_nan_sample_weight_is_never_applied():
    x, y, weights = helpers.classification_data(n=32)
    weights[17] = np.nan
    # The batch's check names it, before the guard sees the NaN loss.
    _assert_refused_third_step(
        (x, y, weights),
        error=(
            ValueError,
            r"^Invalid value for argument `sample_weight`\. Expected weights "
            r">= 0\. Received: the weight nan in batch 3 of epoch 1$",
        ),
    )


@pytest.mark.parametrize(
    ("value", "also"), [(float("nan"), ", loss, gradients"), (-5.0, "")]
)
def test_bad_lambda_schedule_is_never_applied(value, also):
    x, y, _ = helpers.classification_data(n=32)

    def schedule(step):
        return tf.where(step >= 2, value, 1.0)

    _assert_refused_third_step(
        (x, y), lambda_=schedule, what=r"lambda_ \(NaN, Inf or < 0\)" + also
    )


def test_later_steps_of_one_execution_are_refused_too():
    x, y, _ = helpers.classification_data(n=32)
    x[20, 0] = np.inf
    model = keras_sft.SFTModel(helpers.mlp(), lambda_=1.0)
    model.compile(optimizer="adam", steps_per_execution=4)
    reference = _model()
    reference.fit(_batches(x, y).take(2), epochs=1, shuffle=False, verbose=0)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3:"):
        model.fit(_batches(x, y), epochs=1, shuffle=False, verbose=0)
    # Step 4 of the execution was finite, and refused all the same.
    assert int(model.optimizer.iterations.numpy()) == 2
    for a, b in zip(_state(model), _state(reference), strict=True):
        np.testing.assert_array_equal(a, b)


def test_replicas_agree_to_refuse_a_nan_in_one_replica():
    x, y, _ = helpers.classification_data(n=32)
    # Batches of 16 split 8 and 8 over the replicas: only the second
    # replica of the second step sees the NaN.
    x[29, 0] = np.nan
    strategy = helpers.two_cpu_strategy(through_one_device=True)
    with strategy.scope():
        model = _model()
    initial = _state(model)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2:"):
        model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 1
    first_step = _state(model)
    assert not np.array_equal(first_step[0], initial[0])
    # The first step equals one device's: each replica applied its own
    # gradients.
    reference = _model()
    reference.fit(dataset.take(1), epochs=1, shuffle=False, verbose=0)
    for a, b in zip(first_step, _state(reference), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for variable in model.student.weights:
        values = strategy.experimental_local_results(variable.value)
        np.testing.assert_array_equal(values[0], values[1])


def test_loss_scale_optimizer_skips_overflowing_gradients_itself():
    keras.config.set_dtype_policy("mixed_float16")
    x, y, _ = helpers.classification_data(n=32)
    model = keras_sft.SFTModel(helpers.mlp(), lambda_=1.0)
    # A scale this large overflows float16 gradients at first.
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1), initial_scale=2.0**40
    )
    model.compile(optimizer=optimizer)
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert float(optimizer.dynamic_scale.numpy()) < 2.0**40
    assert int(optimizer.iterations.numpy()) < 4


def test_guard_can_be_switched_off():
    x, y, _ = helpers.classification_data(n=32)
    x[20, 0] = np.nan
    model = keras_sft.SFTModel(
        helpers.mlp(), lambda_=1.0, guard_nonfinite=False
    )
    model.compile(optimizer="sgd")
    model.fit(_batches(x, y), epochs=1, shuffle=False, verbose=0)
    assert np.isnan(model.student.get_weights()[0]).any()
    config = model.get_config()
    assert config["guard_nonfinite"] is False
    assert keras_sft.SFTModel.from_config(config).guard_nonfinite is False


def test_guard_nonfinite_must_be_a_bool():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `guard_nonfinite`. Expected a "
        r"bool. Received: guard_nonfinite=1",
    ):
        keras_sft.SFTModel(helpers.mlp(), guard_nonfinite=1)
