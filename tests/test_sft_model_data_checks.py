"""`SFTModel`'s checks of its data (`keras_sft.data_checks`): up front in
`fit`, and on every batch inside the steps. Only what is certainly wrong
for the compiled loss is refused; where Keras defines what the plain
model does (it trains, or it raises), the plain model runs beside."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers

_SPARSE = (
    r"Expected integer class indices in \[0, 3\) for the loss "
    r"`SparseCategoricalCrossentropy`\."
)


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _model(student=None, *, guard_nonfinite=True, **compile_kwargs):
    model = keras_sft.SFTModel(
        student or helpers.mlp(classes=3),
        lambda_=1.0,
        guard_nonfinite=guard_nonfinite,
    )
    compile_kwargs.setdefault("optimizer", "sgd")
    model.compile(**compile_kwargs)
    return model


def _plain(student=None, **compile_kwargs):
    """The plain model, compiled as `_model` compiles `SFTModel`."""
    model = student or helpers.mlp(classes=3)
    compile_kwargs.setdefault("loss", _loss())
    model.compile(optimizer="sgd", **compile_kwargs)
    return model


def _fit(model, *args, **kwargs):
    kwargs.setdefault("verbose", 0)
    if isinstance(args[0], tf.data.Dataset):
        kwargs.setdefault("shuffle", False)
    return model.fit(*args, **kwargs)


def _dataset(*parts, batch_size=8):
    return tf.data.Dataset.from_tensor_slices(parts).batch(batch_size)


def _assert_unchanged(model, initial):
    for a, b in zip(model.get_weights(), initial, strict=True):
        np.testing.assert_array_equal(a, b)


def _bad_labels():
    x, y, _ = helpers.classification_data(n=8)
    fractional = y.astype("float32")
    fractional[2] = 0.5
    negative = y.copy()
    negative[1] = -1
    too_large = y.copy()
    too_large[3] = 3
    not_a_number = y.astype("float32")
    not_a_number[4] = np.nan
    infinite = y.astype("float32")
    infinite[4] = np.inf
    return x, {
        "fractional": (fractional, r"\[0\.5\]"),
        "negative": (negative, r"\[-1\]"),
        "too_large": (too_large, r"\[3\]"),
        "nan": (not_a_number, r"\[nan\]"),
        "inf": (infinite, r"\[inf\]"),
    }


@pytest.mark.parametrize(
    "case", ["fractional", "negative", "too_large", "nan", "inf"]
)
@pytest.mark.parametrize("epochs", [1, 2])
def test_array_labels_must_be_class_indices(case, epochs):
    x, cases = _bad_labels()
    y, values = cases[case]
    model = _model()
    initial = model.get_weights()
    with pytest.raises(
        ValueError,
        match=rf"^Invalid value for argument `y`\. {_SPARSE} Received: y "
        rf"with values such as {values}$",
    ):
        _fit(model, x, y, epochs=epochs)
    _assert_unchanged(model, initial)


def test_string_labels_are_refused_as_keras_refuses_them():
    x, y, _ = helpers.classification_data(n=8)
    with pytest.raises(ValueError, match=r"Invalid dtype"):
        _fit(_plain(), x, y.astype(str))
    with pytest.raises(
        ValueError,
        match=rf"^Invalid value for argument `y`\. {_SPARSE} Received: y of "
        r"dtype <U\d+$",
    ):
        _fit(_model(), x, y.astype(str))
    dataset = _dataset(x, y.astype(str))
    # Unimplemented, or under XLA an unsupported argument.
    with pytest.raises(tf.errors.OpError):
        _fit(_plain(), dataset)
    with pytest.raises(
        ValueError,
        match=rf"^Invalid value for argument `y`\. {_SPARSE} Received: "
        r"labels of dtype string$",
    ):
        _fit(_model(), dataset)


def test_labels_of_other_losses_are_finite_numbers():
    x, _, _ = helpers.classification_data(n=8)
    targets = np.full((8, 3), 0.5, "float32")
    history = _fit(_model(loss="mse"), x, targets)
    assert np.isfinite(history.history["loss"][0])
    targets[5, 1] = np.nan
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `y`\. Expected finite numeric "
        r"labels for the loss `mean_squared_error`\. Received: y with values "
        r"such as \[nan\]$",
    ):
        _fit(_model(loss="mse"), x, targets)


def _masked_mse(y_true, y_pred):
    """A custom loss that reads NaN labels as missing targets."""
    present = keras.ops.logical_not(keras.ops.isnan(y_true))
    error = keras.ops.where(present, y_true - y_pred, 0.0)
    return keras.ops.mean(keras.ops.square(error), axis=-1)


def test_a_custom_loss_decides_what_its_labels_mean():
    x, _, _ = helpers.classification_data(n=16)
    targets = np.full((16, 3), 0.5, "float32")
    targets[::3, 1] = np.nan
    for model in (_plain(loss=_masked_mse), _model(loss=_masked_mse)):
        before = model.get_weights()
        history = _fit(model, _dataset(x, targets), epochs=2)
        assert np.all(np.isfinite(history.history["loss"]))
        assert any(
            np.any(a != b)
            for a, b in zip(model.get_weights(), before, strict=True)
        )


def test_ignored_class_labels_train_as_for_the_plain_model():
    x, y, _ = helpers.classification_data(n=16)
    y[::4] = -1
    for model in (
        _plain(
            loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, ignore_class=-1
            )
        ),
        _model(
            loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, ignore_class=-1
            )
        ),
    ):
        history = _fit(model, _dataset(x, y), epochs=1)
        assert np.isfinite(history.history["loss"][0])
    y[5] = -2
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `y`\. Expected integer class "
        r"indices in \[0, 3\) \(or -1, the ignored class\) .* Received: the "
        r"label -2 in batch 1 of epoch 1$",
    ):
        _fit(
            _model(
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True, ignore_class=-1
                )
            ),
            _dataset(x, y),
        )


def _imputing_mlp():
    """A classifier that replaces NaN inputs by zeros itself."""
    inputs = keras.Input((6,))
    imputed = keras.layers.Lambda(
        lambda t: keras.ops.where(keras.ops.isnan(t), 0.0, t),
        output_shape=(6,),
    )(inputs)
    hidden = keras.layers.Dense(8, activation="relu")(imputed)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


@pytest.mark.parametrize("as_dataset", [False, True])
def test_a_model_that_imputes_nan_inputs_trains_as_the_plain_model(
    as_dataset,
):
    x, y, _ = helpers.classification_data(n=16)
    x[::3, 2] = np.nan
    keras.utils.set_random_seed(0)
    plain = _plain(_imputing_mlp())
    keras.utils.set_random_seed(0)
    model = _model(_imputing_mlp())
    data = (_dataset(x, y),) if as_dataset else (x, y)
    kwargs = {} if as_dataset else {"batch_size": 8, "shuffle": False}
    plain_history = _fit(plain, *data, epochs=2, **kwargs)
    history = _fit(model, *data, epochs=2, **kwargs)
    assert np.all(np.isfinite(history.history["task_loss"]))
    # With lambda_ = 1 the term is 0 at the first step only; the task loss
    # of the first epoch is the plain model's.
    assert history.history["task_loss"][0] == pytest.approx(
        plain_history.history["loss"][0], rel=1e-5
    )
    validation = model.evaluate(x, y, verbose=0, return_dict=True)
    assert np.isfinite(validation["task_loss"])


def _string_classifier():
    """A classifier of strings, whose first layer is an adapted lookup."""
    lookup = keras.layers.StringLookup(output_mode="one_hot")
    lookup.adapt(np.array(["red", "green", "blue"]))
    inputs = keras.Input((1,), dtype="string")
    hidden = keras.layers.Dense(8, activation="relu")(lookup(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


@pytest.mark.parametrize("as_dataset", [False, True])
def test_string_inputs_of_a_lookup_model_train_as_for_the_plain_model(
    as_dataset,
):
    x = tf.constant([["red"], ["green"], ["blue"], ["red"]] * 4)
    y = np.array([0, 1, 2, 0] * 4)
    for model in (_plain(_string_classifier()), _model(_string_classifier())):
        data = (_dataset(x, y, batch_size=4),) if as_dataset else (x, y)
        history = _fit(model, *data, epochs=2)
        assert np.all(np.isfinite(history.history["loss"]))


def _weighted(x, y, sample_weight, as_dataset, batch_size=8):
    """`fit`'s data and keywords: a dataset, or arrays in order."""
    if as_dataset:
        return (_dataset(x, y, sample_weight, batch_size=batch_size),), {}
    return (x, y), {
        "sample_weight": sample_weight,
        "batch_size": batch_size,
        "shuffle": False,
    }


def _token_model(tokens=5, vocabulary=7):
    """A model of per-token logits `(batch, tokens, vocabulary)`."""
    inputs = keras.Input((tokens,), dtype="int32")
    embedded = keras.layers.Embedding(vocabulary, 4)(inputs)
    return keras.Model(inputs, keras.layers.Dense(vocabulary)(embedded))


@pytest.mark.parametrize("as_dataset", [False, True])
def test_per_token_sample_weights_train_as_for_the_plain_model(as_dataset):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 7, size=(8, 5)).astype("int32")
    y = rng.integers(0, 7, size=(8, 5)).astype("int32")
    # A padding mask: later tokens weigh nothing.
    weights = (np.arange(5) < rng.integers(1, 6, size=(8, 1))).astype("int32")
    keras.utils.set_random_seed(0)
    plain = _plain(_token_model())
    keras.utils.set_random_seed(0)
    model = _model(_token_model())
    data, kwargs = _weighted(x, y, weights, as_dataset, batch_size=4)
    plain_loss = _fit(plain, *data, **kwargs).history["loss"][0]
    task_loss = _fit(model, *data, **kwargs).history["task_loss"][0]
    assert task_loss == pytest.approx(plain_loss, rel=1e-5)


@pytest.mark.slow
def test_a_gpt2_causal_lm_trains_on_its_padding_mask_as_the_plain_task():
    pytest.importorskip("keras_hub")
    from tests import hub_tasks

    plain, task = hub_tasks.gpt2_causal_lm(), hub_tasks.gpt2_causal_lm()
    x, y, padding = task.preprocessor(["a b", "ab a b ab", "b", "a ab"])
    x = {name: keras.ops.convert_to_numpy(v) for name, v in x.items()}
    y = keras.ops.convert_to_numpy(y)
    padding = keras.ops.convert_to_numpy(padding)
    assert 0 < padding.sum() < padding.size
    # The data is preprocessed already, as the tasks then take it.
    plain.preprocessor = task.preprocessor = None
    plain.compile(optimizer="sgd")
    model = keras_sft.SFTModel(task, distance="kl")
    model.compile(optimizer="sgd")
    for fitted in (plain, model):
        history = _fit(
            fitted, x, y, sample_weight=padding, batch_size=2, shuffle=False
        )
        assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    ("change", "received"),
    [
        (lambda w: w.__setitem__(2, np.nan), r"\[nan\]"),
        (lambda w: w.__setitem__(2, -1.0), r"\[-1\.0\]"),
    ],
)
def test_array_sample_weights_must_be_at_least_0(change, received):
    x, y, weights = helpers.classification_data(n=8)
    change(weights)
    model = _model()
    initial = model.get_weights()
    with pytest.raises(
        ValueError,
        match=rf"^Invalid value for argument `sample_weight`\. Expected "
        rf"weights >= 0\. Received: sample_weight with values such as "
        rf"{received}$",
    ):
        _fit(model, x, y, sample_weight=weights)
    _assert_unchanged(model, initial)


def test_zero_sample_weights_train_nothing_as_for_the_plain_model():
    x, y, _ = helpers.classification_data(n=8)
    weights = np.zeros(8, "float32")
    for model in (_plain(), _model()):
        before = model.get_weights()
        history = _fit(model, x, y, sample_weight=weights)
        assert history.history["loss"][0] == 0.0
        _assert_unchanged(model, before)


@pytest.mark.parametrize("as_dataset", [False, True])
def test_sample_weights_that_cannot_broadcast_are_refused_in_one_line(
    as_dataset,
):
    x, y, _ = helpers.classification_data(n=16)
    weights = np.ones((16, 3), "float32")
    data, kwargs = _weighted(x, y, weights, as_dataset)
    # The plain model fails too, with a graph trace or a shape error.
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        _fit(_plain(), *data, **kwargs)
    shape = r"\(None, 3\)" if as_dataset else r"\(16, 3\)"
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `sample_weight`\. Expected shape "
        r"\(N,\), the loss per example of an output of shape \(None, 3\)\. "
        rf"Received: sample_weight\.shape={shape}$",
    ):
        _fit(_model(), *data, **kwargs)


def test_lengths_must_match():
    x, y, _ = helpers.classification_data(n=8)
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `y`\. Expected as many examples "
        r"as `x` \(8\)\. Received: sizes x=8, y=7$",
    ):
        _fit(_model(), x, y[:7])


@pytest.mark.parametrize("epochs", [1, 2])
def test_empty_arrays_are_refused(epochs):
    x, y, _ = helpers.classification_data(n=8)
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `x`\. Expected at least one "
        r"example\. Received: x with 0$",
    ):
        _fit(_model(), x[:0], y[:0], epochs=epochs)


def test_empty_dataset_is_refused():
    x, y, _ = helpers.classification_data(n=8)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).take(0)
    with pytest.raises(ValueError, match=r"^The dataset is empty"):
        _fit(_model(), dataset, shuffle=False)


def _later_faults():
    """Data of three batches of 8 whose third holds one fault, by case:
    `(y, sample_weight, expected message)`."""
    _, y, weights = helpers.classification_data(n=24)
    cases = {}
    for name, value, message in [
        ("fractional", 0.5, "the label 0.5"),
        ("too_large", 7, "the label 7"),
        ("negative", -1, "the label -1"),
        ("nan", np.nan, "the label nan"),
        ("inf", np.inf, "the label inf"),
    ]:
        labels = y.astype("float32")
        labels[20] = value
        cases[name] = (
            labels,
            weights,
            rf"^Invalid value for argument `y`\. "
            rf"{_SPARSE} Received: {message} in batch 3 of epoch 1$",
        )
    for name, value in [("negative_weight", -2.0), ("nan_weight", np.nan)]:
        changed = weights.copy()
        changed[19] = value
        cases[name] = (
            y,
            changed,
            r"^Invalid value for argument `sample_weight`\. Expected weights "
            rf">= 0\. Received: the weight {value:g} in batch 3 of epoch 1$",
        )
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "fractional",
        "too_large",
        "negative",
        "nan",
        "inf",
        "negative_weight",
        "nan_weight",
    ],
)
@pytest.mark.parametrize("guard_nonfinite", [True, False])
def test_later_faulty_batch_is_one_line_and_not_applied(
    case, guard_nonfinite, request
):
    x, _, _ = helpers.classification_data(n=24)
    y, weights, expected = _later_faults()[case]
    sgd = keras.optimizers.SGD
    model = _model(guard_nonfinite=guard_nonfinite, optimizer=sgd(0.5))
    initial = model.get_weights()
    reference = _model(optimizer=sgd(0.5))
    good = _dataset(x[:16], y[:16], weights[:16])
    _fit(reference, good)
    with pytest.raises(ValueError, match=expected) as error:
        _fit(model, _dataset(x, y, weights), epochs=2)
    assert len(str(error.value)) < 300
    if not guard_nonfinite and request.config.getoption("--xla"):
        # XLA drops the step's stop: without the guard to refuse it, the
        # faulty step and those after it apply until the epoch's end.
        return
    # The two batches before it trained; it did not.
    helpers.assert_same_trained_weights(
        model.get_weights(), reference.get_weights(), initial, atol=1e-6
    )
    # Each call starts afresh: a later `fit` on good data trains.
    assert np.isfinite(_fit(model, good).history["loss"][0])


def test_later_bad_label_is_one_line():
    x, y, _ = helpers.classification_data(n=16)
    y[12] = 7
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model = _model()
    with pytest.raises(
        ValueError,
        match=rf"^Invalid value for argument `y`\. {_SPARSE} Received: the "
        r"label 7 in batch 2 of epoch 1$",
    ):
        _fit(model, dataset, shuffle=False)
    with pytest.raises(
        ValueError,
        match=rf"^Invalid value for argument `y`\. {_SPARSE} Received: the "
        r"label 7 in batch 2 of the evaluated data$",
    ):
        model.evaluate(dataset, verbose=0)
    with pytest.raises(
        ValueError,
        match=rf"^Invalid value for argument `y`\. {_SPARSE} Received: the "
        r"label 7 in batch 2 of `validation_data`$",
    ):
        _fit(model, dataset.take(1), validation_data=dataset)


def test_a_faulty_batch_in_train_on_batch_is_not_applied():
    x, y, _ = helpers.classification_data(n=8)
    model = _model()
    model.train_on_batch(x, y)
    trained = model.get_weights()
    bad = y.astype("float32")
    bad[0] = 0.5
    with pytest.raises(
        ValueError,
        match=rf"^Invalid value for argument `y`\. {_SPARSE} Received: the "
        r"label 0\.5 in the batch$",
    ):
        model.train_on_batch(x, bad)
    _assert_unchanged(model, trained)
    with pytest.raises(ValueError, match=r"the label 0\.5 in the batch$"):
        model.test_on_batch(x, bad)
    model.train_on_batch(x, y)
    assert any(
        np.any(a != b)
        for a, b in zip(model.get_weights(), trained, strict=True)
    )


def test_replicas_agree_on_a_faulty_batch_in_one_replica():
    x, y, _ = helpers.classification_data(n=16)
    y[13] = 9
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with helpers.two_cpu_strategy().scope():
        model = _model()
    with pytest.raises(
        ValueError,
        match=rf"^Invalid value for argument `y`\. {_SPARSE} Received: the "
        r"label 9 in batch 2 of epoch 1$",
    ):
        _fit(model, dataset)


def test_softmax_student_with_a_logits_loss_is_refused():
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(inputs)
    model = keras_sft.SFTModel(keras.Model(inputs, outputs))
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `loss`\. Expected a loss on "
        r"probabilities for a student whose output 'probs' applies a "
        r"softmax: pass `keras\.losses\.SparseCategoricalCrossentropy"
        r"\(from_logits=False\)`",
    ):
        model.compile(optimizer="sgd")
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
    )


def test_unknown_distill_output_of_a_sequential_student_is_refused():
    student = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(3, name="logits")]
    )
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `distill_outputs`\. Expected "
        r"names of outputs of both the student and the teacher, among "
        r"\['logits'\]\. Received: distill_outputs=\['nope'\]$",
    ):
        keras_sft.SFTModel(student, distill_outputs=["nope"])


# Several outputs: each output's labels and sample weights are checked
# against its own loss and shape.

_NAMES = ("cls", "reg", "flag")


def _three_outputs(as_dict):
    """A classifier `cls` (3 classes), a regressor `reg` and a binary
    classifier `flag`, as a dict or a list of outputs."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(
        8, activation="relu", kernel_initializer=keras.initializers.Ones()
    )(inputs)
    heads = [
        keras.layers.Dense(units, name=name)(hidden)
        for name, units in zip(_NAMES, (3, 1, 1), strict=True)
    ]
    outputs = dict(zip(_NAMES, heads, strict=True)) if as_dict else heads
    return keras.Model(inputs, outputs)


def _multi_model(as_dict, **losses):
    """`SFTModel` of `_three_outputs`, compiled with sparse categorical,
    mean squared and binary cross-entropy losses (or `losses`)."""
    losses = {
        "cls": _loss(),
        "reg": "mse",
        "flag": keras.losses.BinaryCrossentropy(from_logits=True),
        **losses,
    }
    model = keras_sft.SFTModel(
        _three_outputs(as_dict), lambda_=1.0, distance="mse"
    )
    model.compile(
        optimizer="sgd",
        loss=losses if as_dict else [losses[name] for name in _NAMES],
    )
    return model


def _multi_data(as_dict, n=24):
    """`x` and labels of `_three_outputs`: class indices, floats of any
    sign and size, and 0 or 1."""
    x, y, _ = helpers.classification_data(n=n)
    rng = np.random.default_rng(1)
    labels = {
        "cls": y.astype("float32"),
        "reg": rng.normal(scale=1e3, size=(n, 1)).astype("float32"),
        "flag": rng.integers(0, 2, size=(n, 1)).astype("float32"),
    }
    return x, labels if as_dict else tuple(labels[n] for n in _NAMES)


def _by_output(as_dict, values):
    """`values` (a dict by output name) as the model's outputs are."""
    return values if as_dict else tuple(values[n] for n in _NAMES)


@pytest.mark.parametrize("as_dict", [True, False])
@pytest.mark.parametrize(
    ("value", "received"),
    [(3, "3"), (0.5, "0.5"), (-1, "-1"), (np.nan, "nan")],
)
def test_sparse_labels_of_one_output_among_several_are_checked(
    as_dict, value, received
):
    x, y = _multi_data(as_dict)
    labels = dict(zip(_NAMES, y, strict=True)) if not as_dict else dict(y)
    labels["cls"] = labels["cls"].copy()
    labels["cls"][20] = value
    model = _multi_model(as_dict)
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `y`\. Expected integer class "
        r"indices in \[0, 3\) for the loss `SparseCategoricalCrossentropy` "
        rf"of the output `cls`\. Received: the label {received} in batch 3 "
        r"of epoch 1$",
    ):
        _fit(model, _dataset(x, _by_output(as_dict, labels)))


@pytest.mark.parametrize("as_dict", [True, False])
def test_labels_of_a_mean_squared_error_output_may_be_any_float(as_dict):
    x, y = _multi_data(as_dict)
    labels = dict(zip(_NAMES, y, strict=True)) if not as_dict else dict(y)
    labels["reg"] = labels["reg"].copy()
    labels["reg"][:3, 0] = [-7.25, 0.5, 3e7]
    data = _dataset(x, _by_output(as_dict, labels))
    history = _fit(_multi_model(as_dict), data)
    assert np.isfinite(history.history["reg_loss"][0])
    plain = _three_outputs(as_dict)
    plain.compile(
        optimizer="sgd",
        loss=_by_output(
            as_dict,
            {
                "cls": _loss(),
                "reg": "mse",
                "flag": keras.losses.BinaryCrossentropy(from_logits=True),
            },
        ),
    )
    assert np.isfinite(_fit(plain, data).history["loss"][0])


@pytest.mark.parametrize("as_dict", [True, False])
def test_sample_weights_are_checked_per_output(as_dict):
    x, y = _multi_data(as_dict)
    _, _, weights = helpers.classification_data(n=24)
    per_output = {name: weights.copy() for name in _NAMES}
    per_output["reg"][3] = -2.0
    model = _multi_model(as_dict)
    initial = model.get_weights()
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `sample_weight`\. Expected "
        r"weights >= 0 for the output `reg`\. Received: the weight -2 in "
        r"batch 1 of epoch 1$",
    ):
        _fit(model, _dataset(x, y, _by_output(as_dict, per_output)))
    _assert_unchanged(model, initial)
    per_output["reg"][3] = 0.0
    history = _fit(model, _dataset(x, y, _by_output(as_dict, per_output)))
    assert np.isfinite(history.history["loss"][0])


def test_sample_weights_of_one_output_must_fit_its_shape():
    x, y = _multi_data(True)
    weights = {
        "cls": np.ones((24,), "float32"),
        "reg": np.ones((24, 5), "float32"),
        "flag": np.ones((24,), "float32"),
    }
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `sample_weight`\. Expected shape "
        r"\(N,\), the loss per example of the output `reg`, of shape "
        r"\(None, 1\)\. Received: sample_weight\.shape=\(None, 5\)$",
    ):
        _fit(_multi_model(True), _dataset(x, y, weights))


@pytest.mark.parametrize("as_dict", [True, False])
def test_an_output_without_a_loss_has_its_labels_unchecked(as_dict):
    x, y = _multi_data(as_dict)
    labels = dict(zip(_NAMES, y, strict=True)) if not as_dict else dict(y)
    # `cls` has no loss: labels no loss reads are not refused; `flag`'s
    # own loss still checks its labels.
    labels["cls"] = np.full_like(labels["cls"], 7.5)
    model = _multi_model(as_dict, cls=None)
    history = _fit(model, _dataset(x, _by_output(as_dict, labels)))
    assert np.isfinite(history.history["loss"][0])
    labels["flag"] = labels["flag"].copy()
    labels["flag"][9, 0] = np.inf
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `y`\. Expected finite numeric "
        r"labels for the loss `BinaryCrossentropy` of the output `flag`\. "
        r"Received: the label inf in batch 2 of epoch 1$",
    ):
        _fit(model, _dataset(x, _by_output(as_dict, labels)))
