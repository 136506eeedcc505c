"""Private Keras and TensorFlow names live in `keras_sft/_keras_compat.py`,
and the workarounds there do what they are for."""

import configparser
import glob
import os
import re

import keras
import numpy as np

from keras_sft import _keras_compat
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPAT = os.path.join("keras_sft", "_keras_compat.py")
# Private modules of Keras and TensorFlow.
_PRIVATE_MODULES = re.compile(
    r"keras\.src\b|tf\.__internal__|tensorflow\.python"
)
# Private attributes and hooks of Keras and TensorFlow objects that the
# library has used, as attributes or as `getattr` strings.
_PRIVATE_NAMES = re.compile(
    r"\b_(compile_loss|loss_tracker|maybe_symbolic_build|distribute_strategy"
    r"|keras_mask|as_serialized_graph|use_cached_eval_dataset"
    r"|flatten_layers|keras_history|inbound_nodes|trainable_variables"
    r"|non_trainable_variables|functional|nodes_by_depth|inputs_struct"
    r"|outputs_struct|seed_generators|call_has_training_arg"
    r"|in_multi_worker_mode|build_by_run_for_single_pos_arg"
    r"|build_by_run_for_kwargs|gradient_registry)\b"
)


def _sources(*patterns):
    """`{path relative to the repository: source}` of the matching files."""
    paths = []
    for pattern in patterns:
        paths += glob.glob(os.path.join(REPO, pattern), recursive=True)
    sources = {}
    for path in sorted(paths):
        with open(path) as file:
            sources[os.path.relpath(path, REPO)] = file.read()
    return sources


def _using(pattern, sources):
    """The paths of `sources`, `_keras_compat.py` aside, that match."""
    return sorted(
        path
        for path, source in sources.items()
        if path != COMPAT and pattern.search(source)
    )


def test_private_modules_are_imported_by_keras_compat_alone():
    sources = _sources(
        "keras_sft/*.py", "examples/**/*.py", "benchmarks/**/*.py"
    )
    assert _using(_PRIVATE_MODULES, sources) == []
    assert _PRIVATE_MODULES.search(sources[COMPAT])


def test_private_keras_names_are_used_by_keras_compat_alone():
    sources = _sources(
        "keras_sft/*.py", "examples/**/*.py", "benchmarks/**/*.py"
    )
    assert _using(_PRIVATE_NAMES, sources) == []
    assert _PRIVATE_NAMES.search(sources[COMPAT])


def test_supported_keras_versions_are_the_checked_ones():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    requirements = config["options"]["install_requires"].split("\n")
    (keras_pin,) = [r for r in requirements if r.startswith("keras")]
    (checked,) = _keras_compat.KERAS_VERSIONS
    major, minor = (int(part) for part in checked.split("."))
    assert keras_pin == f"keras>={checked},<{major}.{minor + 1}"
    assert keras.__version__.startswith(f"{checked}.")


def _fit_a_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)


def test_releasing_traced_graphs_frees_the_graphs_traced_in_it():
    # The first fit after `clear_session` makes TensorFlow's default
    # graph, which stays.
    with _keras_compat.releasing_traced_graphs():
        _fit_a_model()
    before = helpers.live_traced_graphs()
    with _keras_compat.releasing_traced_graphs():
        _fit_a_model()
    assert helpers.live_traced_graphs() == before
    # TensorFlow 2.21 keeps those traced outside, and with them the
    # variables they read (issue 97697): once this fails, TensorFlow
    # frees them and the workaround can go.
    _fit_a_model()
    assert helpers.live_traced_graphs() > before


def test_replace_weight_leaves_keras_able_to_untrack_the_new_variable():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    old = layer.kernel
    new = keras.Variable(np.ones((3, 2), "float32"), name="kernel")
    _keras_compat.replace_weight(layer, old, new)
    assert layer.kernel is new and layer.weights[0] is new
    # As `quantize` untracks the kernel it deletes.
    layer._untrack_variable(new)
    assert [w.name for w in layer.weights] == ["bias"]
