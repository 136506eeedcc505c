import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers


def _numpy_update(value, current, steps, *, target, horizon):
    """TRL's `AdaptiveKLController.update`, with `steps / horizon` capped
    at 1, in float32 as the variable holds it."""
    error = np.clip(current / target - 1.0, -0.2, 0.2)
    return np.float32(value * (1.0 + error * min(steps / horizon, 1.0)))


def _model(lambda_, seed=0):
    keras.utils.set_random_seed(seed)
    student = helpers.mlp()
    model = keras_sft.SFTModel(
        student, teacher=helpers.perturbed_copy(student), lambda_=lambda_
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def _fit(model, *, epochs=3, callbacks=(), **kwargs):
    x, y, _ = helpers.classification_data(n=48)
    return model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
        **kwargs,
    ).history


_FLOAT = "a float > 0"
_INT = "an int > 0"
_FREQ = '"epoch" or an int > 0'


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("target_distill_loss", 0, _FLOAT),
        ("target_distill_loss", float("nan"), _FLOAT),
        ("target_distill_loss", "1", _FLOAT),
        ("initial_lambda", 0.0, _FLOAT),
        ("initial_lambda", -1.0, _FLOAT),
        ("horizon", 0, _INT),
        ("horizon", 10.0, _INT),
        ("update_freq", "batch", _FREQ),
        ("update_freq", 0, _FREQ),
        ("update_freq", True, _FREQ),
    ],
)
def test_invalid_arguments_are_refused(name, value, expected):
    kwargs = {"target_distill_loss": 0.1, name: value}
    message = (
        f"Invalid value for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        keras_sft.AdaptiveLambda(**kwargs)


def test_is_read_only_through_an_sft_model():
    lambda_ = keras_sft.AdaptiveLambda(0.1)
    with pytest.raises(ValueError, match=r"pass it as `SFTModel\("):
        lambda_(0)
    _model(lambda_)
    with pytest.raises(ValueError, match=r"already holds the lambda_ of"):
        _model(lambda_)


def test_update_is_the_adaptive_kl_controller_rule():
    target, horizon = 0.2, 10
    lambda_ = keras_sft.AdaptiveLambda(
        target, initial_lambda=0.5, horizon=horizon
    )
    lambda_.build()
    expected = np.float32(0.5)
    # Far above (clipped at +20%), near, below, far below (clipped at
    # -20%), a window longer than the horizon (capped), one step.
    for current, steps in [
        (1.0, 5),
        (0.21, 10),
        (0.15, 3),
        (0.0, 10),
        (0.5, 40),
        (0.1, 1),
    ]:
        expected = _numpy_update(
            expected, current, steps, target=target, horizon=horizon
        )
        assert lambda_.update(current, steps) == pytest.approx(
            expected, rel=1e-6
        )
    assert lambda_.update(float("nan"), 10) == pytest.approx(expected)
    assert lambda_.update(float("inf"), 10) == pytest.approx(expected)


def test_each_epoch_updates_from_its_distill_loss_and_the_step_reads_it():
    target, horizon = 0.05, 4
    lambda_ = keras_sft.AdaptiveLambda(
        target, initial_lambda=0.5, horizon=horizon
    )
    model = _model(lambda_)
    x, y, _ = helpers.classification_data(n=16, seed=1)
    history = _fit(model, epochs=4, validation_data=(x, y))

    used = [np.float32(0.5)]
    for distill in history["distill_loss"]:
        # 48 examples in batches of 8: 6 steps per epoch.
        used.append(
            _numpy_update(used[-1], distill, 6, target=target, horizon=horizon)
        )
    np.testing.assert_allclose(history["lambda"], used[1:], rtol=1e-6)
    assert history["lambda"][-1] == pytest.approx(lambda_.value)
    # Far from the target, so every update moved it.
    assert len(set(history["lambda"])) == 4
    # Within an epoch the step used the value of the previous epoch's end:
    # equal batches, so the epoch's loss is its terms' means combined.
    for epoch in range(4):
        assert history["loss"][epoch] == pytest.approx(
            history["task_loss"][epoch]
            + used[epoch] * history["distill_loss"][epoch],
            rel=1e-5,
        )


class _BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items()})


def test_update_freq_updates_from_the_mean_of_each_window():
    target, horizon = 0.05, 4
    lambda_ = keras_sft.AdaptiveLambda(
        target, initial_lambda=0.5, horizon=horizon, update_freq=4
    )
    recorder = _BatchLogs()
    history = _fit(_model(lambda_), epochs=2, callbacks=[recorder])

    value = np.float32(0.5)
    for epoch in range(2):
        logs = recorder.logs[6 * epoch : 6 * (epoch + 1)]
        # The logs hold running means over equal batches: the first four
        # steps' mean is the fourth one's log. Steps 5 and 6 of the
        # epoch are fewer than `update_freq`: not used.
        for step, log in enumerate(logs):
            assert log["lambda"] == pytest.approx(value, rel=1e-6)
            if step == 3:
                value = _numpy_update(
                    value,
                    log["distill_loss"],
                    4,
                    target=target,
                    horizon=horizon,
                )
        assert history["lambda"][epoch] == pytest.approx(value, rel=1e-6)
    assert lambda_.value == pytest.approx(value, rel=1e-6)


def test_callbacks_after_it_see_the_updated_lambda():
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((logs["lambda"], self.model.lambda_.value))

    model = _model(keras_sft.AdaptiveLambda(0.05, initial_lambda=0.5))
    _fit(model, epochs=2, callbacks=[Record()])
    assert [a for a, _ in seen] == [b for _, b in seen]
    assert seen[0][0] != pytest.approx(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("update_freq", ["epoch", 2])
def test_mirrored_equals_one_device(update_freq):
    def train(strategy):
        with strategy.scope():
            model = _model(
                keras_sft.AdaptiveLambda(
                    0.05, initial_lambda=0.5, horizon=4, update_freq=update_freq
                )
            )
        history = _fit(model, epochs=2)
        return model.student.get_weights(), history

    initial = _model(0.5).student.get_weights()
    one_weights, one_logs = train(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two_weights, two_logs = train(helpers.two_cpu_strategy())
    # Two replicas sum in another order, and `lambda_` follows the
    # gradients: over these twelve steps the weights moved apart by up to
    # 8e-5 and `lambda_` (22.5) by 1.6e-5 of itself on a CPU without
    # AVX-512 (a term counted twice moves them by the size of the update,
    # over 1e-2).
    helpers.assert_same_trained_weights(
        two_weights, one_weights, initial, atol=2e-4
    )
    assert len(set(one_logs["lambda"])) == 2
    for key in ("lambda", "distill_loss", "loss"):
        np.testing.assert_allclose(two_logs[key], one_logs[key], rtol=1e-4)


def test_saved_with_the_model(tmp_path):
    lambda_ = keras_sft.AdaptiveLambda(
        0.05, initial_lambda=0.5, horizon=7, update_freq=3
    )
    model = _model(lambda_)
    _fit(model, epochs=2)
    loaded = helpers.keras_round_trip(model, tmp_path)
    assert isinstance(loaded.lambda_, keras_sft.AdaptiveLambda)
    assert loaded.lambda_ is not lambda_
    assert loaded.lambda_.get_config() == lambda_.get_config()
    assert loaded.lambda_.get_config()["initial_lambda"] == 0.5
    # The value reached, not the initial one, as a weight of the model.
    assert lambda_.value != pytest.approx(0.5)
    assert loaded.lambda_.value == lambda_.value
    assert "lambda" in [w.name for w in loaded.non_trainable_weights]


class _PreemptedError(Exception):
    pass


class _PreemptAfterEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise _PreemptedError


def test_backup_and_restore_resumes_from_the_value_reached(tmp_path):
    def adaptive():
        return keras_sft.AdaptiveLambda(0.05, initial_lambda=0.5, horizon=4)

    reference = _model(adaptive())
    expected = _fit(
        reference,
        epochs=4,
        callbacks=[keras_sft.BackupAndRestore(str(tmp_path / "reference"))],
    )
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(_PreemptedError):
        _fit(
            _model(adaptive()),
            epochs=4,
            callbacks=[
                keras_sft.BackupAndRestore(backup_dir),
                _PreemptAfterEpoch(),
            ],
        )
    resumed = _model(adaptive())
    history = _fit(
        resumed, epochs=4, callbacks=[keras_sft.BackupAndRestore(backup_dir)]
    )
    # Epochs 3 and 4 again, from the backup's lambda_ (and weights).
    np.testing.assert_allclose(
        history["lambda"], expected["lambda"][2:], rtol=1e-6
    )
    assert resumed.lambda_.value == pytest.approx(reference.lambda_.value)
    for a, b in zip(
        resumed.student.get_weights(),
        reference.student.get_weights(),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)
