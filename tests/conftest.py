"""Test set-up: two logical CPU devices, quiet TensorFlow, clean state."""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_sft import _keras_compat  # noqa: E402

# Strategy tests split the CPU into two logical devices; this must happen
# before TensorFlow initialises its devices, so at import of the test suite.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)


@pytest.fixture(autouse=True)
def _xla_by_default(request):
    """With `--xla`, `compile` defaults to `jit_compile=True` where Keras's
    `"auto"` resolves to it on a GPU, so that the suite runs the XLA path
    of every test that does not choose its own."""
    if not request.config.getoption("--xla"):
        yield
        return
    # The class that defines `compile`, so that Keras still sees subclasses
    # that do not override it as using the default; and a patch of its
    # own, which a test's `monkeypatch.undo()` leaves in place.
    owner = next(c for c in keras.Model.__mro__ if "compile" in vars(c))
    compile_ = owner.compile

    def compile_with_xla(self, *args, jit_compile="auto", **kwargs):
        # As `"auto"` resolves on a GPU (Keras 3.15): not when eager, not
        # under a distribution strategy, not with a layer that XLA cannot
        # compile.
        if jit_compile == "auto":
            jit_compile = (
                not kwargs.get("run_eagerly")
                and not tf.distribute.has_strategy()
                and all(
                    getattr(layer, "supports_jit", True)
                    for layer in self._flatten_layers()
                )
            )
        return compile_(self, *args, jit_compile=jit_compile, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(owner, "compile", compile_with_xla)
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _clean_keras_state():
    """Gives each test a fresh Keras session, float32 policy and seed."""
    keras.backend.clear_session()
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    # Else every test's models stay alive, and each garbage collection
    # (one per `clear_session`) takes longer than the last.
    with _keras_compat.releasing_traced_graphs():
        yield
    keras.config.set_dtype_policy("float32")


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run the tests marked slow",
    )
    parser.addoption(
        "--xla",
        action="store_true",
        default=False,
        help="compile models with jit_compile=True unless a test chooses",
    )


def pytest_collection_finish(session):
    # What importing TensorFlow, Keras and the test modules made lives as
    # long as the process: out of every later garbage collection, which
    # would scan its 370,000 objects again (0.3 s each, one per test).
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
