"""What made a backup, so that only the same run resumes from it."""

import hashlib
import json
import os

_NAME = "run.json"


def file_sha256(path):
    """The SHA-256 of the file `path`, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def claim_backup(backup_dir, record, *, flag="--backup_dir"):
    """Makes `backup_dir` the backup of the run `record` describes.

    A new (or empty) `backup_dir` gets `record` in `run.json`; an existing
    backup is accepted only if its `run.json` holds the same record, so a
    run never resumes from another run's weights.

    Args:
        backup_dir: String, the backup directory.
        record: Dict of JSON values: what changes the training (the
            pretrained file's checksum, lambda, data, seed, epochs...).
        flag: String, the flag that gave `backup_dir`, for messages.

    Raises:
        ValueError: one line naming the first differences and the fix.
    """
    path = os.path.join(backup_dir, _NAME)
    fix = f"pass another {flag} or delete it to start over"
    if os.path.exists(f"{path}.tmp"):
        # A run killed while it claimed the directory left it; this run
        # holds the lock on `backup_dir`.
        os.remove(f"{path}.tmp")
    if os.path.isdir(backup_dir) and os.listdir(backup_dir):
        try:
            with open(path) as file:
                held = json.load(file)
        except (OSError, ValueError):
            raise ValueError(
                f"{flag}={backup_dir} holds a backup of an unknown run (no "
                f"readable {_NAME}); {fix}"
            ) from None
        record = json.loads(json.dumps(record))  # Tuples as lists.
        differences = [
            f"{key}: {held.get(key)!r} there, {record.get(key)!r} here"
            for key in sorted(set(held) | set(record))
            if held.get(key) != record.get(key)
        ]
        if differences:
            raise ValueError(
                f"{flag}={backup_dir} holds the backup of another run "
                f"({'; '.join(differences)}); {fix}"
            )
        return
    os.makedirs(backup_dir, exist_ok=True)
    with open(f"{path}.tmp", "w") as file:
        json.dump(record, file, sort_keys=True)
    os.replace(f"{path}.tmp", path)
