"""The example binaries, `python -m examples.NAME`.

Python imports this package before any binary, so here, before anything
imports TensorFlow, the binaries keep TensorFlow's C++ log out of their
output, unless the user set `TF_CPP_MIN_LOG_LEVEL` (then they get what
they asked for). Without it a newcomer reads, between the results,
`E0000 ... failed call to cuInit: ... UNKNOWN ERROR (303)` on a machine
without a GPU and `NodeDef mentions attribute use_unbounded_threadpool`
at each new input pipeline, both as errors of this project. The library,
`keras_sft`, never touches a user's logging.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _import_tensorflow_quietly():
    """Imports TensorFlow with the C++ file descriptor 2 sent to
    /dev/null: TensorFlow 2.19 and later print their start-up lines
    ("Could not find cuda drivers", "oneDNN custom operations are on")
    whatever `TF_CPP_MIN_LOG_LEVEL` says (tensorflow/tensorflow#100442).
    An import error still reaches the terminal: it is raised, and
    printed, after the descriptor is back."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


if "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "tensorflow" not in sys.modules:
    # 3 keeps FATAL alone: the cuInit and NodeDef lines are ERRORs. The
    # errors that stop a run reach Python as exceptions, which
    # `common_flags.run` reports on one line.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    _import_tensorflow_quietly()
