"""Frozen copies of pretrained models."""

import inspect
import os
import tempfile
import warnings

import keras
import numpy as np

from keras_sft import _checks
from keras_sft import _keras_compat


def clone_teacher(model):
    """Returns a frozen copy of `model` that predicts exactly as `model` does.

    The copy is made by Keras's own saving: `model` is saved to a `.keras`
    archive in a private temporary directory, which is removed afterwards,
    and loaded back. So the copy holds everything Keras saves: every weight,
    trainable or not (BatchNormalization statistics included), the state of
    adapted preprocessing layers (`Normalization`, `Discretization`,
    `StringLookup`, `IntegerLookup`, `TextVectorization`) with their
    vocabulary assets, nested models, and each layer's dtype policy. It has
    `trainable=False`, so no optimizer can change it, and shares no variable
    with `model`: later changes to `model` do not reach it.

    Sequential and Functional models, `keras.applications` models, keras-hub
    models and subclassed models that implement `get_config` can be copied;
    custom classes need not be registered with
    `keras.saving.register_keras_serializable`. A subclassed model without
    `get_config` whose `__init__` takes plain arguments is copied when the
    config Keras generates for it holds the values it was built with:
    Keras 3 records the defaults of those arguments, not the values given,
    so such a model built with other values is refused, as is one whose
    copy does not take its weights, holds another value in an attribute
    named after an argument, or computes other outputs on a probe batch.
    A subclassed model built by `model.build(input_shape)`, which builds
    none of its layers, gets them built first, from that input shape, as
    its first `fit` builds them (with the same weights).

    Example:

    ```python
    pretrained = keras.models.load_model("pretrained.keras")
    teacher = keras_sft.clone_teacher(pretrained)
    ```

    Args:
        model: A built `keras.Model`.

    Returns:
        A `keras.Model` of the same class, with `trainable=False`.

    Raises:
        ValueError: if `model` is not a built `keras.Model`, has layers
            its `call` cannot build on symbolic inputs, or cannot be
            rebuilt from its config.
    """
    teacher = copy_model(model)
    teacher.trainable = False
    return teacher


def copy_model(model):
    """Returns a copy of `model`, state included, made by Keras's saving."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Invalid value for argument `model`. Expected a `keras.Model` "
            f"instance. Received: model={model!r}"
        )
    if not model.built:
        raise ValueError(
            "Invalid value for argument `model`. Expected a built model, so "
            "that its weights can be copied: call `model.build(input_shape)` "
            f"or call it on a batch first. Received: model={model.name!r} "
            "(not built)"
        )
    _build_layers(model)
    layers = _keras_compat.all_layers(model)
    try:
        generated = _generated_configs(layers)
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "model.keras")
            with warnings.catch_warnings():
                # The archive is read back below with `safe_mode=False`, so
                # the lambdas it holds (in a compiled loss, say) reload.
                warnings.filterwarnings(
                    "ignore", "The object being serialized includes a `lambda`"
                )
                with _keras_compat.lambda_output_shapes(layers):
                    model.save(path)
            # The archive is the one just written from `model`, so loading
            # the Python functions of its `Lambda` layers is safe.
            try:
                copy = keras.saving.load_model(
                    path,
                    custom_objects=_custom_classes(layers),
                    compile=False,
                    safe_mode=False,
                )
            except ValueError as error:
                if not generated:
                    raise
                first = str(error).strip().splitlines()[0].split(". ")[0]
                raise ValueError(
                    f"{_rebuilt_from_defaults(generated)}; the model rebuilt "
                    f"from them does not take its weights ({first})"
                ) from error
        copied_layers = _keras_compat.all_layers(copy)
        _share_lambda_functions(layers, copied_layers)
        _check_generated_copies(model, copy, generated, copied_layers)
    except (NotImplementedError, TypeError, ValueError) as error:
        raise ValueError(
            "Invalid value for argument `model`. Expected a model that can "
            "be rebuilt from its config (implement `get_config`, or pass "
            f"`teacher=` explicitly). Received: model={model.name!r} "
            f"({type(model).__name__}: {error})"
        ) from error
    return copy


def _build_layers(model):
    """Builds the layers `model.build(input_shape)` left unbuilt, as `fit`
    and loading the model's copy would, or raises `ValueError`."""
    unbuilt = [
        layer.name
        for layer in _keras_compat.all_layers(model, include_self=False)
        if not layer.built
    ]
    # A model with its own `build` is rebuilt by it on loading too.
    if not unbuilt or type(model).build is not keras.Model.build:
        return
    # Their weights come from initializers seeded when the layers were
    # made, so building them now gives the values the first `fit` would.
    if not _keras_compat.build_by_run(model):
        raise ValueError(
            "Invalid value for argument `model`. Expected a model whose "
            "layers are built, so that its weights can be copied: call it "
            "on a batch first (`model(x)`; `model.build(input_shape)` "
            "builds none of the layers of a subclassed model). Received: "
            f"model={model.name!r} (layers {unbuilt} not built, and its "
            "`call` cannot run on its input shape "
            f"{model.get_build_config()})"
        )


def _share_lambda_functions(layers, copied_layers):
    """Gives each copied `Lambda` layer the original's Python function.

    Keras saves a `Lambda` function as bytecode and reloads it without the
    globals of the module that defined it, so a function that calls
    `keras.ops` or a helper of its module fails in the copy with a
    `NameError`. A function holds no weights: the original computes what
    the copy should.
    """
    if len(layers) != len(copied_layers):
        return
    for layer, copied in zip(layers, copied_layers, strict=True):
        if isinstance(layer, keras.layers.Lambda) and isinstance(
            copied, keras.layers.Lambda
        ):
            copied.function = layer.function


def _generated_configs(layers):
    """The subclassed models among `layers` whose config Keras generates
    while their `__init__` takes arguments: `(class name, argument names)`
    by position in `layers`.

    Raises `NotImplementedError` where Keras cannot generate it (an
    argument without a default, or whose value is not a plain type).
    """
    generated = {}
    for position, layer in enumerate(layers):
        cls = type(layer)
        if not isinstance(layer, keras.Model) or (
            cls.get_config is not keras.Model.get_config
        ):
            continue
        parameters = list(inspect.signature(cls.__init__).parameters.values())
        arguments = [
            parameter.name
            for parameter in parameters[1:]
            if parameter.kind
            not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            and parameter.name != "name"
        ]
        if not arguments:
            continue
        try:
            layer.get_config()
        except NotImplementedError as error:
            raise NotImplementedError(
                f"{cls.__name__} does not implement `get_config`, and Keras "
                f"cannot generate its config from the `__init__` arguments "
                f"{arguments} (one has no default, or a value that is not a "
                "plain number, string or bool)"
            ) from error
        generated[position] = (cls.__name__, arguments)
    return generated


def _rebuilt_from_defaults(generated):
    """What Keras's generated configs of `generated` (`_generated_configs`)
    hold, as an error message says it."""
    described = ", ".join(
        f"{name} (`__init__` arguments {arguments})"
        for name, arguments in generated.values()
    )
    return (
        f"{described} does not implement `get_config`, and Keras 3 "
        "generates the config of such a subclassed model from the defaults "
        "of its `__init__` arguments, not from the values it was built with"
    )


def _check_generated_copies(model, copy, generated, copied_layers):
    """Raises `ValueError` where a copy rebuilt from Keras's generated
    config (`_generated_configs`) differs from the original: an attribute
    named after an `__init__` argument that holds another value, or other
    outputs on a probe batch."""
    if not generated:
        return
    layers = _keras_compat.all_layers(model)
    if len(copied_layers) != len(layers):
        raise ValueError(
            f"{_rebuilt_from_defaults(generated)}; the copy has "
            f"{len(copied_layers)} layers where the model has {len(layers)}"
        )
    for position, (_, arguments) in generated.items():
        original, copied = vars(layers[position]), vars(copied_layers[position])
        for argument in arguments:
            for name in (argument, f"_{argument}"):
                if name in original and not _same(
                    original[name], copied.get(name)
                ):
                    raise ValueError(
                        f"{_rebuilt_from_defaults(generated)}: "
                        f"{type(layers[position]).__name__} holds "
                        f"{name}={original[name]!r}, its copy "
                        f"{name}={copied.get(name)!r}"
                    )
    probe = _probe(model)
    if probe is None:
        return
    expected = keras.tree.flatten(model(probe, training=False))
    received = keras.tree.flatten(copy(probe, training=False))
    if len(expected) != len(received) or not all(
        np.array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
        for a, b in zip(expected, received, strict=True)
    ):
        raise ValueError(
            f"{_rebuilt_from_defaults(generated)}, and the copy rebuilt "
            "from them computes other outputs than the model"
        )


def _same(a, b):
    """Whether two attribute values are equal (plain values; tuples and
    lists alike), `False` for values that cannot be compared."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _probe(model):
    """A batch of two random inputs of `model`'s single input (zeros for
    integer inputs), or `None` where its shape or dtype is unknown."""
    inputs = getattr(model, "inputs", None)
    if inputs:
        if len(inputs) != 1:
            return None
        shape, dtype = tuple(inputs[0].shape), inputs[0].dtype
    else:
        shape = (model.get_build_config() or {}).get("input_shape")
        dtype = model.compute_dtype
    if not isinstance(shape, (tuple, list)) or not all(
        size is None or isinstance(size, int) for size in shape
    ):
        return None
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "string" or not shape:
        return None
    shape = (2, *(3 if size is None else size for size in shape[1:]))
    if not keras.backend.is_float_dtype(dtype):
        return np.zeros(shape, dtype)
    return np.random.default_rng(0).uniform(0.0, 1.0, shape).astype(dtype)


def _custom_classes(layers):
    """Maps names to the classes of `layers` that Keras does not define."""
    # Keras finds its own classes and registered ones by name; the others
    # would fail to load ("Could not locate class").
    return {
        type(layer).__name__: type(layer)
        for layer in layers
        if not type(layer).__module__.startswith("keras.")
    }


# The precisions `SFTModel(teacher_dtype=...)` runs a teacher in, beside
# `None` (the teacher's own).
TEACHER_DTYPES = ("bfloat16", "float16", "int8")


def cast_teacher(teacher, dtype, *, shared_weights=()):
    """Makes the frozen `teacher` compute in `dtype`, and store its own
    weights in it, in place.

    For `"bfloat16"` and `"float16"`, each layer gets the mixed policy of
    `dtype` (computations in `dtype`, variables read in it), and each
    floating weight the teacher owns is replaced by a copy in `dtype`:
    half the memory of float32. `BatchNormalization` computes in float32
    whatever its policy, as Keras makes it.

    For `"int8"`, Keras's own `quantize("int8")` is applied to each layer
    that Keras quantizes (`Dense`, `EinsumDense`, `Embedding`) and whose
    weights the teacher owns: weights in int8 with one float scale per
    output channel (a quarter of float32's memory), inputs quantized per
    row at each call, outputs in the layer's compute dtype. The other
    layers (convolutions, normalization) keep their precision.

    Weights in `shared_weights` (the student's variables that a shared
    teacher reads) stay as they are: read in `dtype` at each call for the
    half precisions, and not quantized for `"int8"`, whose layers that
    read them compute as before.

    Args:
        teacher: A built, frozen `keras.Model`.
        dtype: String, one of `TEACHER_DTYPES`.
        shared_weights: The variables to leave in place. Defaults to `()`.

    Raises:
        ValueError: For `"int8"`, where a layer to quantize computes in
            float16, which Keras's int8 quantization refuses.
    """
    if dtype == "int8":
        _quantize_int8(teacher, {id(w) for w in shared_weights})
        return
    policy = keras.DTypePolicy(f"mixed_{dtype}")
    shared = {id(w) for w in shared_weights}
    for layer in _keras_compat.all_layers(teacher):
        layer.dtype_policy = policy
        for weights in _keras_compat.own_weights(layer):
            for weight in list(weights):
                if id(weight) in shared or not _is_float(weight.dtype):
                    continue
                copy = keras.Variable(
                    keras.ops.cast(weight, dtype),
                    dtype=dtype,
                    trainable=False,
                    name=weight.name,
                )
                _keras_compat.replace_weight(layer, weight, copy)


def _quantize_int8(teacher, shared):
    """Quantizes to int8 each layer of `teacher` that Keras quantizes and
    that holds none of the variables whose ids are in `shared`."""
    layers = []
    for layer in _keras_compat.all_layers(teacher):
        weights = [w for ws in _keras_compat.own_weights(layer) for w in ws]
        if (
            # What `keras.Model.quantize` quantizes: layers without
            # sublayers that implement `quantize` and are not quantized.
            type(layer).quantize is keras.layers.Layer.quantize
            or len(_keras_compat.all_layers(layer)) > 1
            or layer.quantization_mode is not None
            or not weights
            or any(id(w) in shared for w in weights)
        ):
            continue
        layers.append(layer)
    for layer in layers:
        if layer.compute_dtype == "float16":
            raise _checks.argument_error(
                "teacher_dtype",
                "a teacher whose layers to quantize do not compute in "
                "float16 (Keras's int8 quantization refuses it)",
                received=f"teacher_dtype='int8' with layer {layer.name!r} "
                "computing in float16",
            )
    for layer in layers:
        try:
            layer.quantize("int8")
        except NotImplementedError:
            # A subclass of a layer Keras quantizes, whose `call` Keras
            # cannot know: it keeps its precision, as in `Model.quantize`.
            continue
        # A layer that shared a weight once (unfrozen since) has a stand-in
        # at its kernel's former place in checkpoints: the int8 kernel and
        # its scale are checkpointed as the layer's own.
        _keras_compat.drop_checkpoint_stand_ins(layer)


def _is_float(dtype):
    """Whether `dtype` is a floating dtype."""
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(dtype))
