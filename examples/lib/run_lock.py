"""An exclusive lock on the files of one run."""

import errno
import fcntl
import os


class RunLock:
    """Holds an exclusive `fcntl.flock` on a lock file beside `path`.

    A second run that writes the same output or backup fails at once with
    one line, instead of replacing the first run's output or adopting its
    live backup. The lock file (`.NAME.lock` beside `path`) is removed on
    release; the kernel releases the lock of a killed process.

    Example:

    ```python
    with RunLock("runs/finetuned.keras", flag="--output"):
        train_and_save()
    ```

    Args:
        path: String, the output file or directory to lock.
        flag: String, how the user gave `path` (`"--output"`), for the
            message.

    Raises:
        RuntimeError: on entering, if another process holds the lock.
    """

    def __init__(self, path, *, flag):
        self.path = path
        self.flag = flag
        parent, name = os.path.split(os.path.abspath(path))
        self.lock_path = os.path.join(parent, f".{name}.lock")
        self._descriptor = None

    def __enter__(self):
        while True:
            descriptor = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(descriptor)
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise RuntimeError(
                    f"{self.flag}={self.path} is in use by another run "
                    f"(it holds {self.lock_path}); wait for it to end or "
                    f"pass another {self.flag}"
                ) from None
            # A run that released the lock removed the file it locked: lock
            # the file now at this path, or a third run could too.
            try:
                current = os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(descriptor).st_ino:
                self._descriptor = descriptor
                return self
            os.close(descriptor)

    def __exit__(self, *exc_info):
        os.remove(self.lock_path)
        os.close(self._descriptor)
        self._descriptor = None
