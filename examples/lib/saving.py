"""Writing files whole or not at all."""

import os
import tempfile


def save_atomically(model, path):
    """Saves `model` to the `.keras` file `path`, whole or not at all.

    The model is written to a temporary file beside `path`, then renamed
    over it: a crash midway leaves the previous file (or none), never a
    truncated one.
    """
    ensure_parent(path)
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, staging = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.tmp-", suffix=".keras", dir=directory
    )
    os.close(descriptor)
    try:
        model.save(staging)
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise


def ensure_parent(path):
    """Creates the parent directory of `path` if it does not exist."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
