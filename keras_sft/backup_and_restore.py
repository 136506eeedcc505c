"""BackupAndRestore: a preemption backup that no fault leaves half-written."""

import json
import os
import re

import keras

from keras_sft import _checks
from keras_sft import _keras_compat
from keras_sft import _model_files

_METADATA = "training_metadata.json"
# The weights files of the backups, named by epoch and batch.
_WEIGHTS = re.compile(r"epoch-\d+-batch-\d+\.weights\.h5")


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backup is whole or absent.

    Keras overwrites `latest.weights.h5` in place: a Ctrl-C, a SIGKILL or
    a full disk during the write leaves an HDF5 file with arrays missing,
    and every rerun then fails to load it. Here each backup writes a new
    weights file, flushes it to disk, then names it in
    `training_metadata.json`, which is replaced atomically (`os.replace`)
    and so commits the backup. A fault at any moment leaves the previous
    backup whole, and the same command resumes from it; older weights
    files are removed once the new one is committed. A damaged backup is
    named, with what to do, instead of failing inside HDF5. The weights are
    made in memory before they are written (where memory allows), so that
    a full disk is one `OSError` naming the file and the space free,
    before or during the write; a process killed during a write leaves
    files the next run removes, before it resumes (only those named as
    this callback names its files).

    Under `MultiWorkerMirroredStrategy` every worker restores from
    `backup_dir`, which must be on storage all workers share, and the
    chief alone writes and deletes it (its weights are every worker's:
    the strategy keeps them in sync). Under one device and
    `MirroredStrategy` the one process writes.

    Resuming. As with Keras's callback, `fit` resumes at the epoch after
    the last backup. With an integer `save_freq`, a backup taken in the
    middle of an epoch resumes that epoch from its first batch with the
    weights of the backup; only epoch backups resume exactly where an
    uninterrupted run would be.

    Example:

    ```python
    backup = keras_sft.BackupAndRestore("/shared/backup")
    model.fit(x, y, epochs=20, callbacks=[backup])  # rerun after a crash
    ```

    Args:
        backup_dir: String, the directory of the backup.
        save_freq: `"epoch"` (a backup at the end of each epoch) or an int
            > 0 (a backup every `save_freq` batches). Defaults to
            `"epoch"`.
        double_checkpoint: Bool. Keep the previous backup's weights file
            too, and restore it if the latest cannot be read. Defaults to
            `False`.
        delete_checkpoint: Bool. Delete `backup_dir` when training ends.
            Defaults to `True`.

    Reference:
        `keras.callbacks.BackupAndRestore`, whose `_save_model` and
        `_load_model` this overrides (checked on Keras 3.15).
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint=False,
        delete_checkpoint=True,
    ):
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(
            backup_dir
        ):
            raise _checks.argument_error(
                "backup_dir", "a non-empty path", backup_dir
            )
        if save_freq != "epoch":
            _checks.check_int("save_freq", save_freq, minimum=1)
        _checks.check_bool("double_checkpoint", double_checkpoint)
        _checks.check_bool("delete_checkpoint", delete_checkpoint)
        backup_dir = os.fspath(backup_dir)
        super().__init__(
            backup_dir,
            save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )
        self._metadata = os.path.join(backup_dir, _METADATA)

    def on_train_begin(self, logs=None):
        if self._writes():
            self._remove_uncommitted()
        # Keras's own fallback copies `.bkp` files this callback never
        # writes; its previous backup is read in `_load_model` instead.
        self._load_model()

    def _remove_uncommitted(self):
        """Removes the files a killed backup left in `backup_dir`: its
        temporary files and weights files no record names."""
        if not os.path.isdir(self.backup_dir):
            return
        record = self._record() or {}
        committed = {record.get("weights")}
        if self.double_checkpoint and record.get("previous"):
            committed.add(record["previous"]["weights"])
        for name in os.listdir(self.backup_dir):
            target = _model_files.temporary_target(name)
            ours = name == f"{_METADATA}.tmp" or bool(
                target and _WEIGHTS.fullmatch(target)
            )
            if ours or (_WEIGHTS.fullmatch(name) and name not in committed):
                os.remove(os.path.join(self.backup_dir, name))

    def on_train_end(self, logs=None):
        if self._writes():
            super().on_train_end(logs)

    def _load_model(self):
        record = self._record()
        if record is None or not self.model.built:
            # Keras's own method says that an unbuilt model cannot load.
            super()._load_model()
            return
        entries = [record]
        if self.double_checkpoint and record.get("previous"):
            entries.append(record["previous"])
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            # Its variables must exist to receive the backup's values.
            optimizer.build(self.model.trainable_variables)
        for position, entry in enumerate(entries):
            self._weights_path = os.path.join(self.backup_dir, entry["weights"])
            try:
                self.model.load_weights(self._weights_path)
            except (OSError, ValueError) as error:
                if position + 1 < len(entries):
                    continue
                raise ValueError(
                    f"The backup weights {self._weights_path!r} cannot be "
                    f"read ({type(error).__name__}: {error}). Delete "
                    f"{self.backup_dir!r} to start over, or pass another "
                    "backup directory."
                ) from error
            _keras_compat.set_initial_epoch(self.model, entry["epoch"])
            return

    def _record(self):
        """The committed backup's metadata, or `None` where there is none."""
        if not os.path.exists(self._metadata):
            return None
        try:
            with open(self._metadata) as file:
                record = json.load(file)
        except (OSError, ValueError) as error:
            record = f"{type(error).__name__}: {error}"
        if not isinstance(record, dict) or not {"epoch", "weights"} <= set(
            record
        ):
            raise ValueError(
                f"The backup record {self._metadata!r} was not written by "
                f"keras_sft.BackupAndRestore ({record}). Delete "
                f"{self.backup_dir!r} to start over."
            )
        return record

    def _save_model(self):
        if not self._writes():
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        name = (
            f"epoch-{self._current_epoch}-batch-{self._last_batch_seen}"
            ".weights.h5"
        )
        weights = os.path.join(self.backup_dir, name)
        previous = self._committed_entry(name)
        staging = f"{self._metadata}.tmp"
        written = False
        try:
            # Whole or absent, made in memory first: HDF5 fails on a full
            # disk with pages of errors, at worst a crash.
            _model_files.write_weights(
                weights, self.model, self.model.save_weights, advice=None
            )
            written = True
            with open(staging, "w") as file:
                json.dump(
                    {
                        "epoch": self._current_epoch,
                        "batch": self._last_batch_seen,
                        "weights": name,
                        "previous": previous,
                    },
                    file,
                )
                file.flush()
                os.fsync(file.fileno())
            os.replace(staging, self._metadata)
        except OSError as error:
            committed = self._committed_entry(None) or {}
            if written and committed.get("weights") != name:
                os.remove(weights)
            if os.path.exists(staging):
                os.remove(staging)
            reason = error.strerror or str(error)
            if not reason.startswith("Cannot write"):
                reason = f"Cannot write {staging!r}: {reason}"
            raise OSError(
                error.errno,
                f"Could not write the backup in {self.backup_dir!r}: "
                f"{reason}; the previous backup is intact. Free some space "
                "or pass another backup directory.",
            ) from error
        keep = {name}
        if self.double_checkpoint and previous:
            keep.add(previous["weights"])
        for stale in os.listdir(self.backup_dir):
            if _WEIGHTS.fullmatch(stale) and stale not in keep:
                os.remove(os.path.join(self.backup_dir, stale))

    def _committed_entry(self, name):
        """`{"epoch", "batch", "weights"}` of the committed backup, or
        `None` (none, or the same file as `name`, which may be `None`)."""
        try:
            with open(self._metadata) as file:
                record = json.load(file)
            entry = {key: record[key] for key in ("epoch", "batch", "weights")}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return None if entry["weights"] == name else entry

    def _writes(self):
        """Whether this process writes the backup: the chief of a
        multi-worker cluster, or the one process otherwise."""
        # The strategy's own answer: `MultiWorkerMirroredStrategy` says it
        # of its chief alone, every other strategy of its one process.
        return self.model.distribute_strategy.extended.should_checkpoint
