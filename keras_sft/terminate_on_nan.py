"""TerminateOnNaN: stop at the first non-finite loss, naming its terms."""

import math

import keras


class TerminateOnNaN(keras.callbacks.TerminateOnNaN):
    """Stops training at the first NaN or Inf loss, naming the step and terms.

    Like `keras.callbacks.TerminateOnNaN(raise_error=True)`, but the error
    says which epoch and step went wrong and gives `task_loss` and
    `distill_loss`, so one can tell a diverging task term from a diverging
    consistency term. The error is raised at once: no later callback runs,
    so `ModelCheckpoint` never writes the non-finite weights and the last
    checkpoint saved before it (and a `BackupAndRestore` backup) stays
    usable.

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
        raise RuntimeError(
            f"Non-finite loss at epoch {self._epoch + 1}, step {batch + 1}: "
            f"{terms}. Training stopped; the last saved checkpoint is "
            "unaffected. Lower the learning rate or lambda_, or check the "
            "inputs for NaN or Inf."
        )
