"""TerminateOnNaN: stop at the first non-finite loss, naming its terms."""

import math

import keras


class NonFiniteLossError(RuntimeError):
    """Training stopped at a step whose loss or gradients were not finite."""


def non_finite_error(epoch, step, what, details):
    """The one-line `NonFiniteLossError` for a non-finite step.

    Args:
        epoch: Int, the epoch, counted from 0 as Keras's callbacks count.
        step: Int, the step in the epoch, counted from 0.
        what: String, what was not finite.
        details: String, the values and what became of the weights.
    """
    return NonFiniteLossError(
        f"Non-finite {what} at epoch {epoch + 1}, step {step + 1}: "
        f"{details}. Lower the learning rate or lambda_, or check the "
        "inputs for NaN or Inf."
    )


class TerminateOnNaN(keras.callbacks.TerminateOnNaN):
    """Stops training at the first NaN or Inf loss, naming the step and terms.

    Like `keras.callbacks.TerminateOnNaN(raise_error=True)`, but the error
    says which epoch and step went wrong and gives `task_loss` and
    `distill_loss`, so one can tell a diverging task term from a diverging
    consistency term. The error (a `RuntimeError`) is raised at once: no
    later callback runs, so `ModelCheckpoint` never writes the non-finite
    weights and the last checkpoint saved before it (and a
    `BackupAndRestore` backup) stays usable. `SFTModel`'s own guard
    (`guard_nonfinite`, on by default) already refuses such steps; this
    callback serves models trained without it.

    Example:

    ```python
    model.fit(dataset, callbacks=[keras_sft.TerminateOnNaN()])
    ```

    Reference:
        `keras.callbacks.TerminateOnNaN`.
    """

    def __init__(self):
        super().__init__(raise_error=True)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        terms = ", ".join(
            f"{name}={float(logs[name]):.6g}"
            for name in ("loss", "task_loss", "distill_loss")
            if name in logs
        )
        raise non_finite_error(
            self._epoch,
            batch,
            "loss",
            f"{terms}. Training stopped; the last saved checkpoint is "
            "unaffected",
        )
