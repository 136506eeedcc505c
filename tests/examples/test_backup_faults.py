"""The finetune binary's backup under real faults, from the command line:
a SIGKILL in the middle of a backup's write, a full disk found before the
write and a write failing midway. Each leaves the previous backup whole,
a fault that the binary survives is one line, and a rerun resumes."""

import json
import os
import re
import subprocess
import sys

import pytest

from examples.lib import classifiers
from keras_sft import _model_files
from tests import helpers

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)

# Runs `python -m examples.finetune ARGS...` after the fault that
# `sys.argv[1]` names:
# - "kill_in_second_backup": a SIGKILL halfway through writing the second
#   backup's weights;
# - "no_space": 1000 bytes free on every disk, for the check before the
#   write;
# - "size_limit=N": the kernel refuses to write a file past N bytes
#   (EFBIG, as it refuses ENOSPC on a disk that fills up midway), after
#   the check passed.
_FAULTY_FINETUNE = """
import collections, os, resource, runpy, shutil, signal, sys

fault = sys.argv[1]
if fault == "kill_in_second_backup":
    from keras_sft import _model_files

    write, writes = _model_files.write, []

    def killed_midway(path, save, **kwargs):
        writes.append(path)
        if len(writes) < 2:
            return write(path, save, **kwargs)

        def half_then_kill(staging):
            save(staging)
            with open(staging, "r+b") as file:
                file.truncate(os.path.getsize(staging) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

        return write(path, half_then_kill, **kwargs)

    _model_files.write = killed_midway
elif fault == "no_space":
    usage = collections.namedtuple("usage", ["total", "used", "free"])
    shutil.disk_usage = lambda path: usage(10**9, 10**9 - 1000, 1000)
elif fault.startswith("size_limit="):
    limit = int(fault.split("=")[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["finetune", *sys.argv[2:]]
runpy.run_module("examples.finetune", run_name="__main__")
"""


def _finetune(fault, arguments):
    return subprocess.run(
        [sys.executable, "-c", _FAULTY_FINETUNE, fault, *arguments],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _files(directory):
    """`{name: bytes}` of the files in `directory`."""
    files = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as file:
            files[name] = file.read()
    return files


def _assert_one_line_error(result, pattern):
    """The run failed with one line (no traceback, no HDF5 error, no
    crash) that `pattern` matches in full."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "HDF5" not in result.stderr and "h5py" not in result.stderr
    errors = [
        line for line in result.stderr.splitlines() if line.startswith("Error")
    ]
    assert len(errors) == 1, result.stderr[-3000:]
    assert re.fullmatch(pattern, errors[0]), errors[0]


# Four runs of the binary: about a minute on a shared 2-core machine.
@pytest.mark.slow
def test_faults_during_backups_keep_the_previous_and_a_rerun_resumes(
    tmp_path,
):
    pretrained = str(tmp_path / "pretrained.keras")
    classifiers.build_classifier(
        "mlp", input_shape=(8, 8, 1), num_classes=10
    ).save(pretrained)
    backup_dir = str(tmp_path / "backup")
    output = str(tmp_path / "finetuned.keras")
    arguments = [
        f"--pretrained={pretrained}",
        "--train_split=train[:32]",
        "--test_split=test[:16]",
        "--batch_size=8",
        "--epochs=3",
        f"--output={output}",
        f"--backup_dir={backup_dir}",
    ]

    killed = _finetune("kill_in_second_backup", arguments)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert helpers.backed_up_epoch(backup_dir) == 1
    with open(os.path.join(backup_dir, "training_metadata.json")) as file:
        weights = json.load(file)["weights"]
    (temporary,) = (
        name
        for name in os.listdir(backup_dir)
        if _model_files.temporary_target(name) is not None
    )
    second = _model_files.temporary_target(temporary)
    assert re.fullmatch(r"epoch-2-batch-\d+\.weights\.h5", second)
    kept = _files(backup_dir)
    del kept[temporary]
    directory, second = re.escape(backup_dir), re.escape(second)

    no_space = _finetune("no_space", arguments)
    _assert_one_line_error(
        no_space,
        rf"Error: \[Errno 28\] Could not write the backup in '{directory}': "
        rf"Cannot write '{directory}/{second}': No space left on device \(1000 "
        rf"bytes free in '{directory}', about \d+ needed\); the previous "
        r"backup is intact\. Free some space or pass another backup "
        r"directory\.",
    )
    # The killed run's temporary file is gone; the backup is as it was.
    assert _files(backup_dir) == kept

    limit = len(kept[weights]) // 2
    midway = _finetune(f"size_limit={limit}", arguments)
    _assert_one_line_error(
        midway,
        rf"Error: \[Errno 27\] Could not write the backup in '{directory}': "
        rf"Cannot write '{directory}/{second}': File too large; the previous "
        r"backup is intact\. Free some space or pass another backup "
        r"directory\.",
    )
    assert _files(backup_dir) == kept
    with open(os.path.join(backup_dir, "training_metadata.json")) as file:
        assert json.load(file)["weights"] == weights

    resumed = _finetune("", arguments)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Epoch 2/3" in resumed.stdout
    assert "Epoch 1/3" not in resumed.stdout
    assert os.path.exists(output)
    assert not os.path.exists(backup_dir)
