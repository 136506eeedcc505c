"""Private: model files written whole or not at all, and damaged ones named.

Keras writes a `.keras` or `.weights.h5` file in place, so a fault in the
middle (a full disk, Ctrl-C, a crash) leaves half a file where the user's
only copy of a model was. `write` has the file written beside its path
under a temporary name, then renamed over it: the rename is atomic on one
file system, so the path holds the previous file or the new one, whole.
`SFTModel.save`, `SFTModel.save_weights` and the example binaries write
through it. A `.weights.h5` file is made in memory first where memory
allows (`write_weights`): HDF5 writing onto a disk that fills up midway
crashes, Python's write raises. A kill leaves the temporary file;
`temporary_target` tells which file it was for, so that the next writer
of a directory it owns (`BackupAndRestore`) removes it. A file damaged
all the same (by another program, or copied half)
is named by `damage`, as Keras does not ("File not found" for a
truncated `.keras` file that is there).
"""

import errno
import math
import os
import re
import shutil
import uuid
import zipfile

import h5py
import tensorflow as tf

from keras_sft import _keras_compat

# HDF5's own structure and a `.keras` archive's config, beyond the arrays.
_MARGIN_BYTES = 2**20
# What to do after a full disk, said by `write`'s error by default.
_ADVICE = (
    "Free some space or write to another disk; the file is as it was "
    "before (the previous version, or none)."
)
# The names `write` gives its temporary files: the file's name between
# `temporary_prefix` and a uuid4's 32 hexadecimal digits, then a suffix.
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.tmp-[0-9a-f]{32}(\.[\w.]+)?")


def write(path, save, *, suffix, variables=(), advice=_ADVICE):
    """Writes the file `path` whole or not at all.

    `save(staging)` writes the file to `staging`, a new path beside `path`
    (named with `temporary_prefix`, ending with `suffix` so that Keras
    accepts it), which is then flushed to disk and renamed over `path`. A
    fault at any moment but a kill leaves the previous file (or none) and
    no temporary file. The file gets the mode the user's umask gives a new
    file (0644 under umask 022).

    Args:
        path: String or path-like, the file to write.
        save: Callable taking the temporary path, which writes the file.
        suffix: String, the end of the temporary file's name (`".keras"`).
        variables: The variables the file holds, to refuse up front a file
            that cannot fit (`check_space`: HDF5 fails on a full disk with
            pages of errors, at worst a crash). Defaults to `()`.
        advice: String, what to do after a full disk, ending the error's
            message; `None` for none. Defaults to freeing space or writing
            to another disk.

    Raises:
        OSError: naming `path` (not the temporary file) if it cannot be
            written; on a full disk, with the space free and what to do.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    staging = os.path.join(
        directory, f"{temporary_prefix(path)}{uuid.uuid4().hex}{suffix}"
    )
    try:
        check_space(directory, variables)
        # `os.open` applies the umask, as `tempfile.mkstemp`'s 0600 would
        # not; the mode it gives is read back rather than the umask itself,
        # which only `os.umask` reads, by changing it for every thread.
        os.close(os.open(staging, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        mode = os.stat(staging).st_mode & 0o777
        save(staging)
        os.chmod(staging, mode)
        # On disk before the rename makes it the file, even after a power
        # cut.
        with open(staging, "rb") as file:
            os.fsync(file.fileno())
        os.replace(staging, path)
    except OSError as error:
        raise _write_error(path, directory, error, variables, advice) from error
    except Exception as error:
        # HDF5 and TensorFlow raise their own types for a full disk.
        if _disk_full(error):
            raise _write_error(
                path, directory, error, variables, advice
            ) from error
        raise
    finally:
        if os.path.lexists(staging):
            os.remove(staging)


def write_weights(path, model, save_weights, **kwargs):
    """`write`s the `.weights.h5` file `path` of `model` with
    `save_weights(staging)` (its `keras.Model.save_weights`), the file
    made whole in memory first where memory allows: then a disk filling up
    midway is a Python `OSError`, not HDF5 failing on the disk (pages of
    errors, then a segmentation fault). Takes `write`'s keyword arguments
    but `suffix` and `variables`."""

    def save(staging):
        file = _keras_compat.weights_in_memory(model, save_weights, staging)
        if file is None:
            save_weights(staging)
            return
        with open(staging, "wb") as target:
            target.write(file.getbuffer())

    write(
        path,
        save,
        suffix=".weights.h5",
        variables=model_variables(model),
        **kwargs,
    )


def temporary_prefix(path):
    """The name prefix of the temporary files written for `path`
    (`.finetuned.keras.tmp-` for `runs/finetuned.keras`), beside it; the
    prefix of `keras_sft.export_saved_model`'s staging directory too."""
    return f".{os.path.basename(os.path.normpath(os.fspath(path)))}.tmp-"


def temporary_target(name):
    """The name of the file whose temporary file `write` names `name`
    (`finetuned.keras` for `.finetuned.keras.tmp-<32 hex digits>.keras`),
    or `None` where `write` gives no temporary file that name."""
    match = _TEMPORARY.fullmatch(name)
    return match["target"] if match else None


def is_local(path):
    """Whether `path` is a file name on a local file system (not a URL such
    as `gs://`, nor a file object)."""
    return isinstance(path, (str, os.PathLike)) and "://" not in os.fspath(path)


def damage(path):
    """Why the Keras file `path` cannot be read (for example "not a valid
    .keras file (truncated or not a zip file)"), or `None` where it looks
    whole, is not a local file, or is not there."""
    if not is_local(path) or not os.path.isfile(path):
        return None
    path = os.fspath(path)
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        return "not a valid .keras file (truncated or not a zip file)"
    if path.endswith((".h5", ".hdf5")):
        try:
            with h5py.File(path, "r"):
                pass
        except OSError as error:
            return f"not a valid HDF5 file ({error})"
    return None


def model_variables(model):
    """The variables a Keras file of `model` holds: its weights, and its
    optimizer's variables once compiled."""
    optimizer = getattr(model, "optimizer", None)
    return [*model.weights, *(optimizer.variables if optimizer else ())]


def check_space(directory, variables):
    """Raises `OSError(ENOSPC)` unless `directory` has room for a file
    holding `variables`, with a margin for the file's own structure."""
    needed = _bytes(variables)
    free = shutil.disk_usage(directory).free
    if needed and free < needed:
        raise OSError(errno.ENOSPC, f"{free} bytes free, about {needed} needed")


def _write_error(path, directory, error, variables, advice):
    """The `OSError` that says `path` could not be written, why, and (on a
    full disk) the `advice`."""
    if _disk_full(error):
        free = shutil.disk_usage(directory).free
        needed = _bytes(variables)
        need = f", about {needed} needed" if needed else ""
        message = (
            f"Cannot write {path!r}: {os.strerror(errno.ENOSPC)} ({free} "
            f"bytes free in {directory!r}{need})"
        )
        return OSError(
            errno.ENOSPC, f"{message}. {advice}" if advice else message
        )
    reason = getattr(error, "strerror", None) or str(error)
    message = f"Cannot write {path!r}: {reason}"
    number = getattr(error, "errno", None)
    # With its number, the error keeps its class (`FileNotFoundError`...).
    return OSError(message) if number is None else OSError(number, message)


def _disk_full(error):
    """Whether `error` (Python's, HDF5's or TensorFlow's) says the disk is
    full."""
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
        os.strerror(errno.ENOSPC) in str(error)
    )


def _bytes(variables):
    """The bytes of a file holding `variables`, with a margin for the
    file's own structure (0 for none)."""
    if not variables:
        return 0
    arrays = sum(
        math.prod(v.shape) * tf.as_dtype(v.dtype).size for v in variables
    )
    return int(arrays * 1.1) + _MARGIN_BYTES
