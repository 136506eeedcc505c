"""Runs every shell command and Python snippet of the docs.

Each fenced `sh` or `python` block of README.md, docs/*.md and
examples/README.md runs here, with two exceptions the page states itself:
a block after `<!-- not run: REASON -->` is skipped with that reason, and a
block after `<!-- signature -->` is compared with the signature it shows.
docs/serving.md is run, in order, by tests/test_serving_docs.py.

Python snippets run in this process, in an empty directory, with the names
they leave to the reader (`pretrained`, `new_x`, ...) bound to tiny
stand-ins (`_namespace`). Shell blocks run under bash in an empty
directory, with `python` and `make` on `PATH` replaced: `python -m MODULE`
gets the flags of `_REDUCED[MODULE]` appended (tests/doc_command_shim.py),
so each binary runs briefly; `make` runs as a dry run (`make -n`) in the
repository, which checks that the targets exist without running them.
"""

import contextlib
import inspect
import json
import os
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_sft
from examples.lib import local_cluster
from tests import doc_pages
from tests import helpers

REPO = doc_pages.REPO
# The pages whose blocks run here.
_PAGES = [
    page
    for page in doc_pages.PAGES
    if page
    not in (
        os.path.join("docs", "serving.md"),  # tests/test_serving_docs.py
        os.path.join("benchmarks", "README.md"),
    )
]
# Flags appended to `python -m MODULE` in shell commands, for the smallest
# run that still goes through every step of the command: `MODULE: (always,
# unless_given)`; the second are appended only where the command does not
# set them (so that `--variants=...` or `--models=...` written in a page
# still run what they name).
_REDUCED = {
    "examples.pretrain": (["--epochs=1"], []),
    "examples.finetune": (["--epochs=1"], []),
    # After its `--`: the flags of every worker.
    "examples.launch_local": (["--epochs=1"], []),
    "examples.select_lambda": (
        ["--epochs=1", "--lambda_grid=0,0.1", "--folds=2"],
        [],
    ),
    "examples.segmentation": (
        [
            "--pretrain_epochs=1",
            "--epochs=1",
            "--lambdas=0.1",
            "--l2_sp_alphas=0.01",
            "--anchor_lambdas=0.1",
            "--anchor_count=16",
        ],
        [],
    ),
    "examples.detection": (
        [
            "--scenes=32",
            "--pretrain_epochs=1",
            "--epochs=1",
            "--lambdas=0.1",
            "--anchor_lambdas=0.1",
            "--l2_sp_alphas=0.01",
            "--anchor_count=16",
        ],
        [],
    ),
    "examples.forgetting_benchmark": (
        ["--shifts=invert", "--epochs=1", "--pretrain_epochs=1"],
        ["--seeds=0"],
    ),
    "benchmarks.throughput": (
        ["--rounds=1"],
        ["--models=mlp", "--variants=plain,sft_live"],
    ),
    "benchmarks.whole_fit": (["--epochs=1", "--rounds=1"], ["--models=mlp"]),
    "benchmarks.speed": (
        ["--rounds=1", "--epochs=1", "--fit_rounds=1", "--seeds=1"],
        ["--models=mlp"],
    ),
    "benchmarks.step_ops": (
        ["--rounds=1", "--steps=2"],
        ["--models=mlp", "--variants=plain,sft_live"],
    ),
    "benchmarks.defaults": (
        ["--quick"],
        ["--families=mlp", "--seeds=0", "--shifts=invert"],
    ),
    "benchmarks.gpu": (
        ["--smoke", "--jit_compile=false", "--steps_per_execution=1"],
        ["--models=mlp"],
    ),
}
# Pages whose inline `python -m ...` commands are complete commands (the
# one behind each figure) and run too; elsewhere inline mentions refer to
# a shell block or to `make`.
_INLINE_COMMAND_PAGES = (
    os.path.join("docs", "performance.md"),
    os.path.join("docs", "forgetting.md"),
)
# Python snippets slow enough to run only with --run-slow: (page, text).
_SLOW_SNIPPETS = ((os.path.join("docs", "user_guide.md"), "detector.compile("),)
_SIZE = 32


def _fences():
    return [fence for page in _PAGES for fence in doc_pages.fences(page)]


def _params(kinds):
    params = []
    for fence in _fences():
        if fence.language not in kinds:
            continue
        slow = (fence.language == "sh" and "python" in fence.code) or any(
            fence.page == page and text in fence.code
            for page, text in _SLOW_SNIPPETS
        )
        params.append(
            pytest.param(
                fence,
                id=fence.name,
                marks=[pytest.mark.slow] if slow else [],
            )
        )
    return params


def test_every_block_is_sh_python_or_text():
    for fence in _fences():
        assert fence.language in ("sh", "python", "text"), fence.name


def _not_run(fence):
    if fence.not_run:
        pytest.skip(f"not run: {fence.not_run}")


# Python snippets.


def _digits_classifier():
    """A tiny MLP on flattened 8x8 digits with a `logits` layer."""
    inputs = keras.Input((64,), name="image")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(hidden))


def _namespace(directory):
    """The names doc snippets leave to the reader, bound to tiny stand-ins;
    `pretrained.keras` is written to `directory`."""
    rng = np.random.default_rng(0)
    pretrained = _digits_classifier()
    pretrained.save(directory / "pretrained.keras")
    new_x = rng.random((_SIZE, 64), dtype=np.float32)
    new_y = rng.integers(0, 5, _SIZE)
    model = keras_sft.SFTModel(_digits_classifier())
    model.compile(optimizer="adam")
    return {
        "keras": keras,
        "keras_sft": keras_sft,
        "np": np,
        "tf": tf,
        "pretrained": pretrained,
        # Classes 0-4, as the new data of the examples.
        "new_x": new_x,
        "new_y": new_y,
        "x_new": new_x,
        "y_new": new_y,
        "weights": rng.random(_SIZE, dtype=np.float32),
        "old_x_sample": rng.random((_SIZE, 64), dtype=np.float32),
        "old_inputs": rng.random((_SIZE, 64), dtype=np.float32),
        "old_x": rng.random((_SIZE, 64), dtype=np.float32),
        "old_y": rng.integers(0, 10, _SIZE),
        "images": rng.random((4, 64), dtype=np.float32),
        "model": model,
        "dataset": tf.data.Dataset.from_tensor_slices((new_x, new_y)),
        "backup_and_restore": keras.callbacks.BackupAndRestore(
            str(directory / "backup")
        ),
        # A two-headed student on 64x64x3 images (several outputs).
        "backbone": keras.Sequential(
            [keras.layers.Conv2D(4, 3, padding="same", activation="relu")]
        ),
        "seg_head": keras.layers.Conv2D(3, 1),
        "cls_head": keras.Sequential(
            [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)]
        ),
        "seg_loss": keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        ),
        "cls_loss": keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        ),
        "x": rng.random((_SIZE, 64, 64, 3), dtype=np.float32),
        "masks": rng.integers(0, 3, (_SIZE, 64, 64)),
        "labels": rng.integers(0, 4, _SIZE),
    }


def _mnist_namespace(namespace):
    """For the snippet on TFDS's MNIST: a classifier of its images."""
    pretrained = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    return {
        **namespace,
        "tfds": tfds,
        "pretrained": pretrained,
        "scale": lambda image, label: (tf.cast(image, "float32") / 255, label),
    }


def _mirrored_namespace(namespace):
    """For the snippet that makes a `MirroredStrategy` (over the two
    logical CPUs of conftest.py) and fits a dataset batched with the
    global batch size."""
    helpers.move_collective_keys()
    return {**namespace, "dataset": namespace["dataset"].batch(8)}


def _detection_namespace(namespace):
    """For the snippet on object detectors: a tiny keras-hub RetinaNet and
    eight scenes of boxes (keras-hub installed)."""
    pytest.importorskip("keras_hub")
    from tests import hub_tasks

    images, y = hub_tasks.scenes_with_boxes(8)
    return {
        **namespace,
        "detector": hub_tasks.retinanet_object_detector(),
        "images": images,
        **y,
    }


# Namespaces of the snippets that need other stand-ins, by their text.
_SPECIAL = {
    "tfds.load(": _mnist_namespace,
    "MirroredStrategy()": _mirrored_namespace,
    "detector.compile(": _detection_namespace,
}


def _logged(code):
    """The log names a `# logs:` comment of `code` lists, if any."""
    match = re.search(r"# logs:(.*(?:\n\s*#\s{2,}.*)*)", code)
    if not match:
        return []
    names = re.sub(r"\(.*?\)|#", " ", match.group(1), flags=re.S)
    return re.findall(r"\w+", names)


@pytest.mark.parametrize("fence", _params(("python",)))
def test_python_snippet_runs(fence, tmp_path, monkeypatch):
    _not_run(fence)
    if fence.signature:
        _check_signature(fence)
        return
    monkeypatch.chdir(tmp_path)
    namespace = _namespace(tmp_path)
    for text, special in _SPECIAL.items():
        if text in fence.code:
            namespace = special(namespace)
    code = compile(fence.code, fence.name, "exec")
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        # Keras 3.15 warns at every `fit(dataset)` that its default
        # `shuffle=True` does not apply; the snippets show the `fit` a user
        # writes, without `shuffle=False`.
        warnings.filterwarnings(
            "ignore", "`shuffle=True` was passed", UserWarning
        )
        if "tfds" in namespace:
            stack.enter_context(tfds.testing.mock_data(num_examples=64))
        exec(code, namespace)
    logs = _logged(fence.code)
    if logs:
        assert set(logs) <= set(namespace["model"].history.history), logs


def _check_signature(fence):
    """The parameters a `<!-- signature -->` block shows are the code's."""
    name, arguments = re.fullmatch(
        r"([\w.]+)\((.*)\)\s*", fence.code, re.S
    ).groups()
    shown = {}
    exec(f"def shown({arguments}): pass", shown)
    target = keras_sft
    for part in name.split(".")[1:]:
        target = getattr(target, part)

    def parameters(function):
        return [
            (p.name, p.kind, p.default)
            for p in inspect.signature(function).parameters.values()
        ]

    assert parameters(shown["shown"]) == parameters(target)


# Shell blocks.


def _shims(directory):
    """A `bin` folder whose `python` and `make` are the test's."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" '
        f'"{os.path.join(REPO, "tests", "doc_command_shim.py")}" "$@"\n'
    )
    make = bin_dir / "make"
    make.write_text(f'#!/bin/sh\nexec /usr/bin/make -n -C "{REPO}" "$@"\n')
    for shim in (python, make):
        shim.chmod(0o755)
    return bin_dir


# The script a reader runs on each worker (docs/user_guide.md).
_TRAIN_PY = """
import keras
import numpy as np

import keras_sft
from keras_sft import strategy as strategies

strategy = strategies.build_strategy("multi_worker")
with strategy.scope():
    model = keras_sft.SFTModel(keras.models.load_model("pretrained.keras"))
    model.compile(optimizer="adam")
rng = np.random.default_rng(0)
x, y = rng.random((32, 64), dtype=np.float32), rng.integers(0, 10, 32)
model.fit(x, y, batch_size=16, epochs=1, verbose=0)
"""


def _multi_worker_script(code, directory):
    """The block with free ports, `train.py` written, and a final wait for
    the worker it starts in the background (its exit status)."""
    _digits_classifier().save(directory / "pretrained.keras")
    (directory / "train.py").write_text(_TRAIN_PY)
    for port, free in zip(
        sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", code))),
        local_cluster.free_ports(2),
        strict=True,
    ):
        code = code.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free}")
    return code + "wait $!\n"


@pytest.mark.parametrize("fence", _params(("sh",)))
def test_shell_block_runs(fence, tmp_path):
    _not_run(fence)
    work = tmp_path / "work"
    work.mkdir()
    code = fence.code
    if "TF_CONFIG" in code:
        code = _multi_worker_script(code, work)
    _run_shell(code, work, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "page, command",
    [
        pytest.param(page, command, id=f"{page}: {command}")
        for page in _INLINE_COMMAND_PAGES
        for command in doc_pages.inline_commands(page)
    ],
)
def test_inline_command_runs(page, command, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _run_shell(command, work, tmp_path)


def _run_shell(code, work, tmp_path):
    """Runs `code` under bash in `work`, with the shims of `_shims`."""
    env = {
        **os.environ,
        "PATH": f"{_shims(tmp_path)}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": REPO,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "DOCS_REDUCED": json.dumps(_REDUCED),
    }
    env.pop("TF_CONFIG", None)
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
