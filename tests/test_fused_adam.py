import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from keras_sft import _keras_compat
from tests import helpers

_SHAPES = ((5, 3), (3,))


def _op_types(concrete):
    """The op types of a concrete function's graph and of the functions
    it calls (cond branches)."""
    graph = concrete.graph.as_graph_def()
    nodes = list(graph.node)
    for function in graph.library.function:
        nodes += list(function.node_def)
    return {node.op for node in nodes}


def _variables(dtype="float32"):
    rng = np.random.default_rng(0)
    return [
        keras.Variable(rng.normal(size=shape), dtype=dtype) for shape in _SHAPES
    ]


def _gradients(step, dtype="float32"):
    rng = np.random.default_rng(step + 1)
    return [tf.constant(rng.normal(size=shape), dtype) for shape in _SHAPES]


def _train(optimizer, variables, *, steps=5, fuse=True, jit_compile=False):
    """Applies `steps` gradients through a traced step, fused where
    `fuse`; returns the op types of the step's graph."""

    @tf.function
    def step(gradients):
        with _keras_compat.fused_adam(optimizer, jit_compile=jit_compile):
            optimizer.apply_gradients(zip(gradients, variables, strict=True))

    if not fuse:
        step = tf.function(
            lambda gradients: optimizer.apply_gradients(
                zip(gradients, variables, strict=True)
            )
        )
    dtype = variables[0].dtype
    for i in range(steps):
        step(_gradients(i, dtype))
    return _op_types(step.get_concrete_function(_gradients(0, dtype)))


def _numpy_adam(steps, learning_rate=1e-3, beta_1=0.9, beta_2=0.999):
    """Adam in float64, from its paper's formulas."""
    weights = [v.numpy().astype("float64") for v in _variables()]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    for t in range(1, steps + 1):
        for i, g in enumerate(_gradients(t - 1)):
            g = g.numpy().astype("float64")
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g**2
            alpha = learning_rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
            weights[i] = weights[i] - alpha * m[i] / (np.sqrt(v[i]) + 1e-7)
    return weights, m, v


def test_the_fused_update_is_adam():
    variables = _variables()
    optimizer = keras.optimizers.Adam(1e-3)
    ops = _train(optimizer, variables)

    assert "ResourceApplyAdam" in ops
    weights, m, v = _numpy_adam(5)
    for actual, expected in zip(variables, weights, strict=True):
        np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-6)
    # Keras's Adam keeps the moments in the order of the weights.
    moments = zip(
        optimizer.variables[2::2], optimizer.variables[3::2], strict=True
    )
    for (momentum, velocity), m_i, v_i in zip(moments, m, v, strict=True):
        np.testing.assert_allclose(momentum.numpy(), m_i, rtol=1e-5)
        # `1 - beta_2` is taken in float32: 1.3e-5 relative.
        np.testing.assert_allclose(velocity.numpy(), v_i, rtol=3e-5)
    assert int(optimizer.iterations.numpy()) == 5
    # Nothing of the fusing stays on the optimizer.
    assert "update_step" not in vars(optimizer)


@pytest.mark.parametrize(
    "make",
    [
        # Weight decay, clipping, a schedule and gradient accumulation stay
        # Keras's: only the update is fused.
        lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1, clipnorm=0.5),
        lambda: keras.optimizers.Adam(
            keras.optimizers.schedules.ExponentialDecay(1e-2, 2, 0.5),
            gradient_accumulation_steps=2,
        ),
        lambda: keras.optimizers.LossScaleOptimizer(
            keras.optimizers.Adam(1e-2)
        ),
    ],
    ids=["adamw_clipnorm", "schedule_accumulation", "loss_scale"],
)
def test_what_surrounds_the_update_stays_keras_s(make):
    fused, keras_own = _variables(), _variables()
    ops = _train(make(), fused, steps=6)
    _train(make(), keras_own, steps=6, fuse=False)

    assert "ResourceApplyAdam" in ops
    for a, b in zip(fused, keras_own, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


class OwnUpdateAdam(keras.optimizers.Adam):
    def update_step(self, gradient, variable, learning_rate):
        variable.assign_sub(learning_rate * gradient)


@pytest.mark.parametrize(
    "make, jit_compile, dtype",
    [
        (lambda: keras.optimizers.Adam(amsgrad=True), False, "float32"),
        (OwnUpdateAdam, False, "float32"),
        (keras.optimizers.SGD, False, "float32"),
        (keras.optimizers.Adam, True, "float32"),
        (keras.optimizers.Adam, False, "float64"),
    ],
    ids=["amsgrad", "own_update_step", "sgd", "xla", "float64"],
)
def test_other_updates_are_keras_s_own(make, jit_compile, dtype):
    ops = _train(make(), _variables(dtype), steps=1, jit_compile=jit_compile)

    assert "ResourceApplyAdam" not in ops


def test_a_strategy_keeps_keras_s_update():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        variables = _variables()
        optimizer = keras.optimizers.Adam()

    @tf.function
    def step(gradients):
        def replica_step(gradients):
            with _keras_compat.fused_adam(optimizer, jit_compile=False):
                optimizer.apply_gradients(
                    zip(gradients, variables, strict=True)
                )

        strategy.run(replica_step, args=(gradients,))

    assert "ResourceApplyAdam" not in _op_types(
        step.get_concrete_function(_gradients(0))
    )


def test_a_watched_weight_keeps_keras_s_update():
    # A weight that a teacher shares is copied on write: the write must go
    # through the variable's methods, where the hook sees it.
    variables = _variables()
    seen = []
    _keras_compat.set_before_writes(variables[0], seen.append)

    _train(keras.optimizers.Adam(), variables, steps=1)

    # Once per trace: the optimizer's first call builds, then retraces.
    assert seen


def test_a_sparse_gradient_keeps_keras_s_update():
    embedding = keras.layers.Embedding(10, 4)
    embedding.build((None,))
    optimizer = keras.optimizers.Adam()

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            loss = keras.ops.sum(embedding(ids))
        gradients = tape.gradient(loss, embedding.trainable_weights)
        assert isinstance(gradients[0], tf.IndexedSlices)
        with _keras_compat.fused_adam(optimizer, jit_compile=False):
            optimizer.apply_gradients(
                zip(gradients, embedding.trainable_weights, strict=True)
            )

    ids = tf.constant([1, 2])
    step(ids)
    assert "ResourceApplyAdam" not in _op_types(step.get_concrete_function(ids))


def test_the_optimizer_is_left_as_it_was_after_an_error():
    optimizer = keras.optimizers.Adam()
    with (
        pytest.raises(ZeroDivisionError),
        _keras_compat.fused_adam(optimizer, jit_compile=False),
    ):
        assert "update_step" in vars(optimizer)
        raise ZeroDivisionError
    assert "update_step" not in vars(optimizer)


class UnfusedAdam(keras.optimizers.Adam):
    """Keras's Adam, its update a subclass's own: never fused."""

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient, variable, learning_rate)


def test_sft_model_trains_through_the_fused_update():
    x, y, _ = helpers.classification_data()
    models = []
    for optimizer in (keras.optimizers.Adam(), UnfusedAdam()):
        model = keras_sft.SFTModel(helpers.mlp(), lambda_=0.5)
        model.compile(optimizer=optimizer)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        models.append(model)
    fused, keras_own = models

    batch = (tf.constant(x[:8]), tf.constant(y[:8]))
    for model, expected in ((fused, True), (keras_own, False)):
        step = tf.function(model.train_step).get_concrete_function(batch)
        assert ("ResourceApplyAdam" in _op_types(step)) is expected
    for a, b in zip(
        fused.student.get_weights(),
        keras_own.student.get_weights(),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
