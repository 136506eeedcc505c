"""Exporting the fine-tuned student as a TensorFlow SavedModel."""

import contextlib
import os
import re
import shutil
import uuid

import keras
import tensorflow as tf

from keras_sft.sft_model import SFTModel

_OUTPUTS = ("logits", "probabilities", "both")
_PROBABILITIES_SUFFIX = "_probabilities"


def export_saved_model(
    model,
    export_dir,
    *,
    input_signature=None,
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
        raise ValueError(
            "Invalid value for argument `model`. Expected a `keras.Model` "
            f"or a `keras_sft.SFTModel`. Received: model={model!r}"
        )
    if outputs not in _OUTPUTS:
        raise ValueError(
            "Invalid value for argument `outputs`. Expected one of "
            f"{_OUTPUTS}. Received: outputs={outputs!r}"
        )
    if not (
        version is None
        or version == "next"
        or (type(version) is int and version >= 0)
    ):
        raise ValueError(
            "Invalid value for argument `version`. Expected None, 'next' or "
            f"an int >= 0. Received: version={version!r}"
        )
    if compute_dtype not in (None, "float32"):
        raise ValueError(
            "Invalid value for argument `compute_dtype`. Expected None or "
            f"'float32'. Received: compute_dtype={compute_dtype!r}"
        )
    if input_signature is None:
        names, specs, structure = _symbolic_inputs(student)
    else:
        names, specs, structure = _given_inputs(input_signature)
    serve = tf.function(
        _serving_function(student, names, structure, outputs),
        input_signature=specs,
        autograph=False,
    )
    # Traced before anything is written, so a student that does not take
    # these inputs is refused without side effects.
    if compute_dtype is None:
        concrete = serve.get_concrete_function()
    else:
        with _dtype_policy(student, compute_dtype):
            concrete = serve.get_concrete_function()
    resources = _captured_resources(student, concrete)

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
    # `tf.Module` keeps `variables` to itself and `tf.train.Checkpoint` adds
    # a `save_counter`; a bare trackable (as Keras uses) holds just these.
    root = tf.__internal__.tracking.AutoTrackable()
    root.variables = list(concrete.variables)
    root.resources = resources
    root.serve = serve
    # Same parent, so the final rename stays on one file system and is
    # atomic. `os.mkdir` (unlike `tempfile.mkdtemp`'s 0700) applies the
    # user's umask, and the rename keeps the mode.
    staging_dir = os.path.join(
        parent, f".{os.path.basename(export_dir)}.tmp-{uuid.uuid4().hex}"
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


def _captured_resources(student, concrete):
    """The student's resources (lookup tables) that `concrete` captures."""
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
    for trackable in tf.train.TrackableView(student).descendants():
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


@contextlib.contextmanager
def _dtype_policy(student, policy):
    """Gives every layer of `student` the dtype `policy` while inside."""
    # Layers read their compute dtype from their policy at call time, so
    # the trace computes in `policy` with the same (float32) variables.
    layers = list(student._flatten_layers(include_self=True, recursive=True))
    previous = [layer.dtype_policy for layer in layers]
    try:
        for layer in layers:
            layer.dtype_policy = policy
        yield
    finally:
        for layer, layer_policy in zip(layers, previous, strict=True):
            layer.dtype_policy = layer_policy


def _symbolic_inputs(student):
    """Names, `tf.TensorSpec`s and call form of the student's own inputs."""
    try:
        inputs = student.inputs
    except AttributeError:
        inputs = None
    if not inputs:
        raise ValueError(
            "Invalid value for argument `model`. Expected a built model with "
            "symbolic inputs (Functional or Sequential), or pass "
            "`input_signature` (a list of `tf.TensorSpec`). Received: "
            f"model={student!r} with inputs={inputs!r}"
        )
    # A Sequential model has no `input` until it is called; it takes one
    # tensor.
    structure = (
        inputs[0] if isinstance(student, keras.Sequential) else student.input
    )
    if isinstance(structure, dict):
        names, tensors, form = list(structure), list(structure.values()), dict
    else:
        tensors = list(inputs)
        names = [
            _input_name(tensor, index, len(tensors))
            for index, tensor in enumerate(tensors)
        ]
        form = list if isinstance(structure, (list, tuple)) else None
    specs = [
        tf.TensorSpec((None, *tensor.shape[1:]), tensor.dtype, name=name)
        for name, tensor in zip(names, tensors, strict=True)
    ]
    return names, specs, form


def _input_name(tensor, index, count):
    """A symbolic input's name: its own when given, else by position."""
    # `keras.Input(name=...)` names both the tensor and its `InputLayer`;
    # unnamed, they get unrelated counters (`keras_tensor_3`,
    # `input_layer_1`) that change from one session to the next.
    if tensor.name == tensor._keras_history.operation.name:
        return tensor.name
    return "inputs" if count == 1 else f"inputs_{index}"


def _given_inputs(input_signature):
    """Names, `tf.TensorSpec`s and call form of an `input_signature`."""
    specs = []
    if isinstance(input_signature, (list, tuple)):
        specs = list(input_signature)
    form = None
    if len(specs) == 1 and isinstance(specs[0], dict):
        form, names, specs = dict, list(specs[0]), list(specs[0].values())
    if not specs or not all(isinstance(s, tf.TensorSpec) for s in specs):
        raise ValueError(
            "Invalid value for argument `input_signature`. Expected a "
            "non-empty list of `tf.TensorSpec`, or a list holding one dict "
            f"of them. Received: input_signature={input_signature!r}"
        )
    if form is None:
        form = list if len(specs) > 1 else None
        names = [
            spec.name or ("inputs" if len(specs) == 1 else f"inputs_{index}")
            for index, spec in enumerate(specs)
        ]
    specs = [
        tf.TensorSpec(spec.shape, spec.dtype, name=name)
        for name, spec in zip(names, specs, strict=True)
    ]
    return names, specs, form


def _serving_function(student, input_names, form, outputs):
    """The function served: named tensors in, named float32 tensors out."""

    def serve(*tensors):
        if form is dict:
            inputs = dict(zip(input_names, tensors, strict=True))
        elif form is list:
            inputs = list(tensors)
        else:
            (inputs,) = tensors
        results = student(inputs, training=False)
        if isinstance(results, dict):
            named = list(results.items())
        else:
            if not isinstance(results, (list, tuple)):
                results = [results]
            names = _output_names(student, len(results))
            named = list(zip(names, results, strict=True))
        served = {}
        for name, logits in named:
            # Mixed-precision students compute (and may output) float16;
            # servers, clients and TFLite expect float32.
            logits = tf.cast(logits, tf.float32)
            if outputs != "logits" and logits.shape[-1] == 1:
                raise ValueError(
                    "Invalid value for argument `outputs`. Expected "
                    "'logits' for a student with an output of one unit "
                    "(its softmax is always 1). Received: "
                    f"outputs={outputs!r} with output {name!r} of shape "
                    f"{logits.shape}"
                )
            if outputs in ("logits", "both"):
                served[name] = logits
            if outputs in ("probabilities", "both"):
                served[name + _PROBABILITIES_SUFFIX] = tf.nn.softmax(logits)
        if len(served) != len(named) * (2 if outputs == "both" else 1):
            raise ValueError(
                "Invalid value for argument `model`. Expected outputs with "
                "distinct names. Received: outputs named "
                f"{[name for name, _ in named]}, served as {list(served)}"
            )
        return served

    return serve


def _output_names(student, count):
    """The names of the student's `count` outputs, after their layers."""
    if isinstance(student, keras.Sequential):
        names = [student.layers[-1].name]
    else:
        names = getattr(student, "output_names", None)
    if names and len(names) == count:
        return list(names)
    return ["outputs"] if count == 1 else [f"outputs_{i}" for i in range(count)]


def _next_version(base_dir):
    """One more than the largest integer version in `base_dir`, or 1."""
    versions = [
        int(name) for name in os.listdir(base_dir) if re.fullmatch(r"\d+", name)
    ]
    return max(versions, default=0) + 1
