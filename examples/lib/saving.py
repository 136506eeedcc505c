"""Writing files whole or not at all, with the modes of the user's umask."""

import os
import uuid


def save_atomically(model, path):
    """Saves `model` to the `.keras` file `path`, whole or not at all.

    The model is written to a temporary file beside `path` (named with
    `temporary_prefix`), then renamed over it: a crash midway leaves the
    previous file (or none), never a truncated one. The file gets the mode
    the user's umask gives a new file (0644 under umask 022), so another
    user can read it.

    Raises:
        OSError: naming `path` (not the temporary file), if it cannot be
            written.
    """
    ensure_parent(path)
    directory = os.path.dirname(os.path.abspath(path))
    staging = os.path.join(
        directory, f"{temporary_prefix(path)}{uuid.uuid4().hex}.keras"
    )
    try:
        # `os.open` applies the umask, as `tempfile.mkstemp`'s 0600 would
        # not; the mode it gives is read back rather than the umask itself,
        # which only `os.umask` reads, by changing it for every thread.
        os.close(os.open(staging, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        mode = os.stat(staging).st_mode & 0o777
        model.save(staging)
        os.chmod(staging, mode)
        os.replace(staging, path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(f"Cannot write {path!r}: {reason}") from error
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def temporary_prefix(path):
    """The name prefix of the temporary files written for `path`
    (`.finetuned.keras.tmp-` for `runs/finetuned.keras`), beside it; the
    same prefix as `keras_sft.export_saved_model`'s staging directory."""
    return f".{os.path.basename(os.path.normpath(path))}.tmp-"


def ensure_parent(path):
    """Creates the parent directory of `path` if it does not exist."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
