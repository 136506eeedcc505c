"""Exporting the fine-tuned student as a TensorFlow SavedModel."""

import os
import re
import shutil
import uuid

import keras
import tensorflow as tf

from keras_sft import _checks
from keras_sft import _keras_compat
from keras_sft import _model_files
from keras_sft import _serving_signature
from keras_sft.sft_model import SFTModel

_OUTPUTS = ("logits", "probabilities", "both")


def export_saved_model(
    model,
    export_dir,
    *,
    input_signature=None,
    preprocessing=None,
    outputs="logits",
    version=None,
    compute_dtype=None,
    overwrite=False,
):
    """Writes the student alone as a TensorFlow SavedModel.

    The SavedModel's `serving_default` signature maps a batch of inputs to
    the student's outputs computed with `training=False`, as float32
    whatever the dtype policy the student was trained under. Its names are
    the model's own:

    - inputs: one per model input, named after it (`keras.Input(...,
      name="pixels")` gives `pixels`; dict inputs keep their keys). An
      unnamed single input is `inputs`, unnamed inputs among several are
      `inputs_0`, `inputs_1`, ... by position. With `input_signature`,
      each `tf.TensorSpec`'s name (dict keys for a dict).
    - outputs: named after the output layers (`model.output_names`, the
      names the training logs use); dict outputs keep their keys. A model
      without symbolic outputs (subclassed) serves `outputs`, or
      `outputs_0`, `outputs_1`, ... for a list.
    - with `outputs="probabilities"`, each output `name` is served as
      `name_probabilities`, the softmax over its last axis; with
      `outputs="both"`, `name` (logits) and `name_probabilities` side by
      side.

    With `preprocessing`, a Keras layer (or model) applied to the inputs
    before the student, the signature takes what the preprocessing takes:
    the preprocessing the training data went through belongs in the
    export, so a client sends raw inputs (with
    `keras_sft.data.rescaling("digits")`, raw 0..16 pixels). The inputs keep
    the student's names, shapes and dtypes unless `input_signature` says
    otherwise (needed for a preprocessing that changes them).

    Only the student's variables are written, once each: the teacher is
    needed for training, not for serving. So are the lookup tables its
    layers hold (`StringLookup`, `IntegerLookup`, `TextVectorization`), with
    any vocabulary file copied into the export's `assets/`; a table no layer
    holds (one a `Lambda` closes over) is refused. The SavedModel is written
    to a temporary directory beside its destination and renamed into place,
    so it appears complete or not at all: a failure midway leaves no partial
    SavedModel behind. With `overwrite`, an existing export is moved aside,
    the new one renamed into place, and the old one deleted: a crash leaves
    the previous export, or the new one, or (between the two renames) none,
    never a mix. Directories and files get the modes the user's umask gives
    (0755 and 0644 under umask 022), so a server running as another user can
    read them.

    With `version`, `export_dir` is a TensorFlow Serving base directory
    (created with its parents if needed) and the SavedModel is written to
    `export_dir/<version>/`; `version="next"` picks one more than the
    largest integer version already there (1 in an empty base).

    Example:

    ```python
    keras_sft.export_saved_model(model, "/tmp/student", version="next")
    serving = tf.saved_model.load("/tmp/student/1")
    # Keyword arguments only: concrete functions refuse positional ones.
    logits = serving.signatures["serving_default"](
        pixels=tf.constant(images, tf.float32)
    )["logits"]
    ```

    Args:
        model: A `keras_sft.SFTModel` (its `student` is exported) or a
            built `keras.Model`.
        export_dir: String or path-like, a local directory. Without
            `version`, its parent must exist.
        input_signature: `None`, a list of `tf.TensorSpec` (one per input
            of the student, which is called with the tensor itself when
            there is one and with the list otherwise), or a list holding
            one dict of `tf.TensorSpec` (the student is called with the
            dict). Required for a student without symbolic inputs
            (subclassed). Defaults to `None`: the student's own inputs
            with a free batch size.
        preprocessing: `None` or a `keras.layers.Layer` (a
            `keras.Model` included), called with the inputs (with
            `training=False`) and giving the student's inputs; its
            variables and lookup tables are exported with the student's.
            Defaults to `None`: clients send what the student takes.
        outputs: `"logits"`, `"probabilities"` or `"both"`, what the
            signature serves for each output of the student (see above).
            Defaults to `"logits"`.
        compute_dtype: `None` or `"float32"`. With `"float32"`, the
            export computes in float32 even if the student was built
            under a mixed precision policy (its variables are float32
            already): what the TFLite converter's built-in ops need, and
            what CPUs run fastest. Defaults to `None`: the student's own
            policy (a `mixed_float16` student computes in float16 and
            still outputs float32).
        version: `None`, an int >= 0 or `"next"`. Defaults to `None`: the
            SavedModel is written at `export_dir` itself.
        overwrite: Bool, whether to replace an existing export at the
            destination. Defaults to `False`: an existing one is refused.
    """
    student = model.student if isinstance(model, SFTModel) else model
    if not isinstance(student, keras.Model):
        raise _checks.argument_error(
            "model", "a `keras.Model` or a `keras_sft.SFTModel`", model
        )
    if preprocessing is not None and not isinstance(
        preprocessing, keras.layers.Layer
    ):
        raise _checks.argument_error(
            "preprocessing", "None or a `keras.layers.Layer`", preprocessing
        )
    _checks.check_one_of("outputs", outputs, _OUTPUTS)
    if not (
        version is None
        or version == "next"
        or (type(version) is int and version >= 0)
    ):
        raise _checks.argument_error(
            "version", "None, 'next' or an int >= 0", version
        )
    if compute_dtype not in (None, "float32"):
        raise _checks.argument_error(
            "compute_dtype", "None or 'float32'", compute_dtype
        )
    serve, concrete = _serving_signature.trace(
        student, input_signature, outputs, compute_dtype, preprocessing
    )
    resources = _captured_resources(student, preprocessing, concrete)

    export_dir = os.path.abspath(os.fspath(export_dir))
    if version is not None:
        os.makedirs(export_dir, exist_ok=True)
        if version == "next":
            version = _next_version(export_dir)
        export_dir = os.path.join(export_dir, str(version))
    if os.path.exists(export_dir) and not overwrite:
        raise ValueError(
            "Invalid value for argument `export_dir`. Expected a path that "
            "does not exist yet (or pass `overwrite=True`). Received: "
            f"export_dir={export_dir!r}"
        )
    parent = os.path.dirname(export_dir)
    if not os.path.isdir(parent):
        raise ValueError(
            "Invalid value for argument `export_dir`. Expected a path whose "
            f"parent directory exists. Received: export_dir={export_dir!r}"
        )

    # Keras's `ExportArchive.track(student)` saves each weight twice: its
    # `variables` list holds the Keras variables, its `_all_variables` the
    # `tf.Variable`s inside them that the traced function captures, and a
    # checkpoint writes each object's value under its own key. Tracking the
    # captured variables alone stores each once.
    # A bare trackable (as Keras uses) holds just these.
    root = _keras_compat.bare_trackable()
    root.variables = list(concrete.variables)
    root.resources = resources
    root.serve = serve
    # Same parent, so the final rename stays on one file system and is
    # atomic. `os.mkdir` (unlike `tempfile.mkdtemp`'s 0700) applies the
    # user's umask, and the rename keeps the mode.
    staging_dir = os.path.join(
        parent, f"{_model_files.temporary_prefix(export_dir)}{uuid.uuid4().hex}"
    )
    os.mkdir(staging_dir)
    try:
        tf.saved_model.save(
            root, staging_dir, signatures={"serving_default": concrete}
        )
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    if os.path.exists(export_dir):
        previous_dir = f"{staging_dir}.previous"
        os.rename(export_dir, previous_dir)
        os.rename(staging_dir, export_dir)
        shutil.rmtree(previous_dir)
    else:
        os.rename(staging_dir, export_dir)


def _captured_resources(student, preprocessing, concrete):
    """The resources (lookup tables) of the student and its preprocessing
    that `concrete` captures."""
    # Lookup layers (`StringLookup`, `IntegerLookup`, `TextVectorization`)
    # keep their vocabulary in a table, not in variables: it must be saved
    # too, with the vocabulary file it reads as an asset. Only those the
    # function captures: an adapted layer also holds the (emptied) table
    # it counted tokens in.
    handles = {
        id(tensor): tensor
        for tensor in concrete.captured_inputs
        if tensor.dtype == tf.resource
    }
    for variable in concrete.variables:
        handles.pop(id(variable.handle), None)
    resources = []
    trackables = tf.train.TrackableView(student).descendants()
    if preprocessing is not None:
        trackables += tf.train.TrackableView(preprocessing).descendants()
    for trackable in trackables:
        if (
            isinstance(trackable, tf.saved_model.experimental.TrackableResource)
            and handles.pop(id(trackable.resource_handle), None) is not None
        ):
            resources.append(trackable)
    if handles:
        # Held only by a closure (a `Lambda` layer's function, say): the
        # SavedModel would have no way to recreate it.
        raise ValueError(
            "Invalid value for argument `model`. Expected a model whose "
            "lookup tables and other resources are attributes of its layers. "
            f"Received: model={student!r} whose call uses "
            f"{len(handles)} resource(s) none of its layers holds: "
            f"{list(handles.values())}"
        )
    return resources


def _next_version(base_dir):
    """One more than the largest integer version in `base_dir`, or 1."""
    versions = [
        int(name) for name in os.listdir(base_dir) if re.fullmatch(r"\d+", name)
    ]
    return max(versions, default=0) + 1
