"""Writing files whole or not at all, with the modes of the user's umask."""

import os

from keras_sft import _model_files

# The prefix of the temporary files and directories written beside a path
# (`.finetuned.keras.tmp-` for `runs/finetuned.keras`); the same for
# `keras_sft.export_saved_model`'s staging directory.
temporary_prefix = _model_files.temporary_prefix


def save_atomically(model, path):
    """Saves `model` to the `.keras` file `path`, whole or not at all.

    The model is written to a temporary file beside `path` (named with
    `temporary_prefix`), then renamed over it: a crash midway leaves the
    previous file (or none), never a truncated one. The file gets the mode
    the user's umask gives a new file (0644 under umask 022), so another
    user can read it.

    Raises:
        OSError: naming `path` (not the temporary file), if it cannot be
            written; on a full disk, with the space free.
    """
    ensure_parent(path)
    _model_files.write(
        path,
        model.save,
        suffix=".keras",
        variables=_model_files.model_variables(model),
    )


def ensure_parent(path):
    """Creates the parent directory of `path` if it does not exist."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
