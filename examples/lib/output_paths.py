"""Checking, before training, that a run can write where it is told to."""

import glob
import os
import shutil
import tempfile

from examples.lib import saving


def check_writable(path, *, flag, directory):
    """Checks that `path` can be written, creating its parent if needed.

    Args:
        path: String, the output path as the user gave it.
        flag: String, the flag that gave it (`"--output"`), for messages.
        directory: Bool, whether `path` is a directory (else a file).

    Raises:
        OSError: one line quoting `flag=path` and the reason.
    """
    if directory and os.path.isfile(path):
        raise OSError(f"{flag}={path} is a file; pass a directory")
    if not directory and os.path.isdir(path):
        raise OSError(f"{flag}={path} is a directory; pass a file name")
    parent = os.path.dirname(os.path.abspath(path))
    target = path if os.path.isdir(path) else parent
    try:
        os.makedirs(parent, exist_ok=True)
        # A real write: `os.access` says yes to root on a read-only mount.
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(
            f"Cannot write {flag}={path}: {reason} ({target}); pass a path "
            "in a writable directory"
        ) from None


def remove_stale_temporaries(path):
    """Removes the temporary files and directories that a killed run left
    beside `path` (those named with `saving.temporary_prefix`). Call it
    holding the run's lock on `path`, so none is another run's."""
    parent = os.path.dirname(os.path.abspath(path))
    pattern = os.path.join(
        glob.escape(parent), glob.escape(saving.temporary_prefix(path)) + "*"
    )
    for stale in glob.glob(pattern):
        if os.path.isdir(stale):
            shutil.rmtree(stale)
        else:
            os.remove(stale)
