"""The serving signature of an exported student: names, specs, float32."""

import contextlib

import keras
import tensorflow as tf

from keras_sft import _keras_compat

PROBABILITIES_SUFFIX = "_probabilities"


def trace(student, input_signature, outputs, compute_dtype, preprocessing):
    """`(serve, concrete)`: the `tf.function` served and its trace.

    Traced before anything is written, so a student that does not take
    these inputs is refused without side effects.
    """
    if input_signature is None:
        names, specs, structure = _symbolic_inputs(student)
    else:
        names, specs, structure = _given_inputs(input_signature)
    serve = tf.function(
        _serving_function(student, names, structure, outputs, preprocessing),
        input_signature=specs,
        autograph=False,
    )
    if compute_dtype is None:
        return serve, serve.get_concrete_function()
    with _dtype_policy(student, compute_dtype):
        return serve, serve.get_concrete_function()


@contextlib.contextmanager
def _dtype_policy(student, policy):
    """Gives every layer of `student` the dtype `policy` while inside."""
    # Layers read their compute dtype from their policy at call time, so
    # the trace computes in `policy` with the same (float32) variables.
    layers = _keras_compat.all_layers(student)
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
    if tensor.name == _keras_compat.producing_node(tensor)[0].operation.name:
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


def _serving_function(student, input_names, form, outputs, preprocessing):
    """The function served: named tensors in, named float32 tensors out."""

    def serve(*tensors):
        if form is dict:
            inputs = dict(zip(input_names, tensors, strict=True))
        elif form is list:
            inputs = list(tensors)
        else:
            (inputs,) = tensors
        if preprocessing is not None:
            inputs = preprocessing(inputs, training=False)
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
                served[name + PROBABILITIES_SUFFIX] = tf.nn.softmax(logits)
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
