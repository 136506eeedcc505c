"""AdaptiveLambda: `lambda_` adapted during `fit` to hold a drift target."""

import math

import keras

from keras_sft import _checks

# The largest relative error one update acts on, as in the adaptive KL
# controller of Ziegler et al.: a far-off target moves `lambda_` by at most
# 20% per update, so one noisy window cannot swing it.
_MAX_ERROR = 0.2


@keras.saving.register_keras_serializable(package="keras_sft")
class AdaptiveLambda(keras.optimizers.schedules.LearningRateSchedule):
    """A `lambda_` that `fit` adapts to hold the consistency term at a target.

    Instead of a strength, state how far the student may drift from the
    teacher: the value of `distill_loss` (the consistency term before
    `lambda_`, as `fit` logs it) to hold. Pass it as `SFTModel`'s
    `lambda_`; `SFTModel.fit` then updates `lambda_` at the end of each
    epoch (or every `update_freq` steps) from the mean `distill_loss` since
    the last update, as the adaptive KL controller of Ziegler et al. (TRL's
    `AdaptiveKLController`) does for its reference model:

        lambda_ *= 1 + clip(current / target - 1, -0.2, 0.2)
                     * min(steps / horizon, 1)

    A student further from the teacher than the target gets a larger
    `lambda_`, a closer one a smaller `lambda_`. The mean is the one `fit`
    logs, already reduced over the replicas and workers of any strategy,
    and the update is made outside the step, the same on every replica.

    `lambda_`'s value is a non-trainable weight of the `SFTModel` (named
    `lambda`): it is saved with the model (`model.save`, `save_weights`,
    `keras_sft.BackupAndRestore`), so a loaded or resumed model goes on
    from the value it had reached. Each epoch's logs carry it as `lambda`
    (the value the next step uses). `train_on_batch` and custom loops do
    not adapt it: call `update` there.

    Example:

    ```python
    lambda_ = keras_sft.AdaptiveLambda(target_distill_loss=0.1)
    model = keras_sft.SFTModel(pretrained, lambda_=lambda_)
    model.compile(optimizer="adam")
    history = model.fit(x, y, epochs=20)
    history.history["lambda"]  # the value after each epoch
    ```

    Args:
        target_distill_loss: Float > 0, the `distill_loss` to hold, in the
            units of `SFTModel`'s `distance`.
        initial_lambda: Float > 0, `lambda_` before the first update.
            Defaults to `0.3`, `SFTModel`'s fixed default.
        horizon: Int > 0, in training steps: over `horizon` steps a
            relative error of 20% or more changes `lambda_` by about 20%.
            Defaults to `100`.
        update_freq: `"epoch"` (at the end of each epoch, from the epoch's
            mean) or an int N > 0 (every N steps of an epoch, from the mean
            of those steps; the last steps of an epoch, fewer than N, are
            not used). Defaults to `"epoch"`.

    Reference:
        - Ziegler et al., "Fine-Tuning Language Models from Human
          Preferences", 2019, Section 2.2
          (https://arxiv.org/abs/1909.08593).
    """

    def __init__(
        self,
        target_distill_loss,
        *,
        initial_lambda=0.3,
        horizon=100,
        update_freq="epoch",
    ):
        _checks.check_float(
            "target_distill_loss", target_distill_loss, positive=True
        )
        _checks.check_float("initial_lambda", initial_lambda, positive=True)
        _checks.check_int("horizon", horizon, minimum=1)
        if update_freq != "epoch":
            try:
                _checks.check_int("update_freq", update_freq, minimum=1)
            except ValueError:
                raise _checks.argument_error(
                    "update_freq", '"epoch" or an int > 0', update_freq
                ) from None
        self.target_distill_loss = float(target_distill_loss)
        self.initial_lambda = float(initial_lambda)
        self.horizon = horizon
        self.update_freq = update_freq
        self.variable = None

    def build(self):
        """Creates the variable that holds `lambda_`, in the current
        strategy's scope; `SFTModel` calls it once, when it is made."""
        if self.variable is not None:
            raise ValueError(
                "This AdaptiveLambda already holds the lambda_ of another "
                "SFTModel; give each model its own (for example "
                "`AdaptiveLambda.from_config(lambda_.get_config())`)."
            )
        # Not cast under mixed precision: the step reads it in float32.
        self.variable = keras.Variable(
            self.initial_lambda,
            dtype="float32",
            trainable=False,
            autocast=False,
            name="lambda",
        )
        return self.variable

    def __call__(self, step):
        del step  # The value is the controller's, not the step's.
        if self.variable is None:
            raise ValueError(
                "AdaptiveLambda is read by an SFTModel: pass it as "
                "`SFTModel(..., lambda_=...)`."
            )
        return self.variable

    @property
    def value(self):
        """The current `lambda_`, a Python float."""
        if self.variable is None:
            return self.initial_lambda
        return float(keras.ops.convert_to_numpy(self.variable))

    def update(self, current, steps):
        """Moves `lambda_` towards holding `current` at the target.

        Args:
            current: Float, the mean `distill_loss` over the last `steps`
                steps. A value that is not finite leaves `lambda_` as it is.
            steps: Int > 0, the steps since the last update.

        Returns:
            The new `lambda_`, a Python float.
        """
        current = float(current)
        if not math.isfinite(current):
            return self.value
        error = min(
            max(current / self.target_distill_loss - 1.0, -_MAX_ERROR),
            _MAX_ERROR,
        )
        # Capped so that one long window cannot turn the factor negative.
        factor = 1.0 + error * min(steps / self.horizon, 1.0)
        self(None).assign(self.value * factor)
        return self.value

    def get_config(self):
        return {
            "target_distill_loss": self.target_distill_loss,
            "initial_lambda": self.initial_lambda,
            "horizon": self.horizon,
            "update_freq": self.update_freq,
        }


def fit_arguments(model, arguments):
    """`fit`'s `arguments` with, first, the callback that adapts `model`'s
    `lambda_` when it is an `AdaptiveLambda` (unchanged otherwise)."""
    if not isinstance(model.lambda_, AdaptiveLambda):
        return arguments
    callbacks = list(arguments.get("callbacks") or [])
    # First: callbacks after it (backups, monitors, the progress bar) see
    # the updated `lambda_`.
    return {
        **arguments,
        "callbacks": [_AdaptLambda(model.lambda_), *callbacks],
    }


class _AdaptLambda(keras.callbacks.Callback):
    """Updates an `AdaptiveLambda` from the `distill_loss` of `fit`."""

    def __init__(self, adaptive):
        super().__init__()
        self.adaptive = adaptive
        self._steps = 0
        self._window = (0.0, 0.0, 0)

    def on_epoch_begin(self, epoch, logs=None):
        # Keras resets the trackers at each epoch's start.
        self._steps = 0
        self._window = (0.0, 0.0, 0)

    def on_train_batch_end(self, batch, logs=None):
        self._steps = batch + 1
        freq = self.adaptive.update_freq
        if freq == "epoch" or self._steps - self._window[2] < freq:
            return
        # The tracker's sums, not the logged running mean: the mean of
        # this window alone. Read outside the step, they are summed over
        # the replicas (Keras's metric variables are synchronised on read).
        tracker = self.model.distill_loss_tracker
        total, count = (
            float(keras.ops.convert_to_numpy(v))
            for v in (tracker.total, tracker.count)
        )
        start_total, start_count, start_step = self._window
        if count > start_count:
            self.adaptive.update(
                (total - start_total) / (count - start_count),
                self._steps - start_step,
            )
        self._window = (total, count, self._steps)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        # The epoch's logged mean: by now validation has reset the tracker.
        if self.adaptive.update_freq == "epoch" and "distill_loss" in logs:
            self.adaptive.update(logs["distill_loss"], self._steps)
        logs["lambda"] = self.adaptive.value
