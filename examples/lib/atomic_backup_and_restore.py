"""A `BackupAndRestore` whose backup is replaced whole or not at all."""

import glob
import json
import os

import keras

_METADATA = "training_metadata.json"


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that survives any interruption.

    Keras overwrites `latest.weights.h5` in place, so a Ctrl-C during the
    write leaves valid HDF5 with arrays missing, and falls back to its spare
    copy only on `OSError`: every rerun then fails. Here each backup writes
    a new weights file, then names it in `training_metadata.json`, which is
    replaced atomically (`os.replace`) and so commits the backup: an
    interruption at any moment leaves the previous backup whole, and a rerun
    resumes from it. Older weights files are removed after the commit.

    Example:

    ```python
    model.fit(x, y, epochs=10, callbacks=[AtomicBackupAndRestore("backup")])
    ```

    Args:
        backup_dir: String, the backup directory (removed after training
            ends, as in Keras).

    Reference:
        `keras.callbacks.BackupAndRestore`, whose `_save_model` and
        `_load_model` this overrides (Keras 3.12 to 3.15).
    """

    def __init__(self, backup_dir):
        super().__init__(backup_dir)
        self._metadata = os.path.join(backup_dir, _METADATA)

    def _load_model(self):
        if os.path.exists(self._metadata):
            try:
                with open(self._metadata) as file:
                    name = json.load(file)["weights"]
            except (OSError, ValueError, KeyError) as error:
                raise ValueError(
                    f"The backup in {self.backup_dir!r} was not written by "
                    f"this program ({type(error).__name__}: {error}); delete "
                    "it to start over"
                ) from error
            self._weights_path = os.path.join(self.backup_dir, name)
        super()._load_model()

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = (
            f"epoch-{self._current_epoch}-batch-{self._last_batch_seen}"
            ".weights.h5"
        )
        weights = os.path.join(self.backup_dir, name)
        self.model.save_weights(weights, overwrite=True)
        # On disk before the metadata names it, even after a power cut.
        with open(weights, "rb") as file:
            os.fsync(file.fileno())
        staging = f"{self._metadata}.tmp"
        with open(staging, "w") as file:
            json.dump(
                {
                    "epoch": self._current_epoch,
                    "batch": self._last_batch_seen,
                    "weights": name,
                },
                file,
            )
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, self._metadata)
        for path in glob.glob(os.path.join(self.backup_dir, "*.weights.h5")):
            if os.path.basename(path) != name:
                os.remove(path)
