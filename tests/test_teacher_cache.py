import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers


def _arrays(use_weights=True, n=40):
    x, y, weights = helpers.classification_data(n=n)
    return (x, y, weights) if use_weights else (x, y)


def _examples(use_weights=True, n=40):
    return tf.data.Dataset.from_tensor_slices(_arrays(use_weights, n))


def _fit(strategy, cache, use_weights=True, directory=None, arrays=False):
    """Student weights after two shuffled epochs, live or cached teacher."""
    keras.utils.set_random_seed(0)
    with strategy.scope():
        student = helpers.mlp(dropout=0.2)
        # "mse": this learning rate was chosen for it.
        model = keras_sft.SFTModel(
            student,
            teacher=helpers.perturbed_copy(student),
            lambda_=1.0,
            distance="mse",
        )
        model.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.9))
    dataset = _examples(use_weights)
    if cache:
        dataset = keras_sft.cache_teacher_outputs(
            model.teacher,
            _arrays(use_weights) if arrays else dataset,
            batch_size=7,
            directory=directory,
        )
    dataset = dataset.shuffle(40, seed=1).batch(8)
    history = model.fit(dataset, epochs=2, shuffle=False, verbose=0)
    return model.student.get_weights(), history.history


@pytest.mark.parametrize("arrays", [False, True])
@pytest.mark.parametrize("use_weights", [False, True])
def test_cached_equals_live(use_weights, arrays):
    live, live_logs = _fit(tf.distribute.get_strategy(), False, use_weights)
    cached, cached_logs = _fit(
        tf.distribute.get_strategy(), True, use_weights, arrays=arrays
    )
    helpers.assert_same_trained_weights(
        cached, live, helpers.mlp().get_weights()
    )
    assert cached_logs["distill_loss"] == pytest.approx(
        live_logs["distill_loss"], rel=1e-5
    )


@pytest.mark.slow
@pytest.mark.parametrize("arrays", [False, True])
def test_cached_equals_live_mirrored(arrays):
    live, _ = _fit(helpers.two_cpu_strategy(), False)
    cached, _ = _fit(helpers.two_cpu_strategy(), True, arrays=arrays)
    for a, b in zip(cached, live, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("arrays", [False, True])
def test_cache_on_disk_equals_live(tmp_path, arrays):
    live, _ = _fit(tf.distribute.get_strategy(), False)
    cached, _ = _fit(
        tf.distribute.get_strategy(),
        True,
        directory=str(tmp_path / "c"),
        arrays=arrays,
    )
    assert (tmp_path / "c").is_dir()
    for a, b in zip(cached, live, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("arrays", [False, True])
def test_cached_outputs_are_the_teachers_in_numpy(arrays):
    teacher = helpers.mlp()
    x, y, _ = helpers.classification_data(n=10)
    data = (x, y) if arrays else tf.data.Dataset.from_tensor_slices((x, y))
    elements = list(
        keras_sft.cache_teacher_outputs(teacher, data, batch_size=4)
    )
    expected = helpers.numpy_mlp_logits(teacher.get_weights(), x)
    assert len(elements) == 10
    for i, (xi, yi, weight, outputs) in enumerate(elements):
        np.testing.assert_array_equal(xi, x[i])
        assert yi == y[i] and weight is None
        np.testing.assert_allclose(outputs, expected[i], atol=1e-5)


def test_evaluate_on_the_cache_equals_live():
    model = keras_sft.SFTModel(
        helpers.mlp(), teacher=helpers.perturbed_copy(helpers.mlp())
    )
    model.compile(optimizer="sgd")
    dataset = _examples()
    cached = keras_sft.cache_teacher_outputs(model.teacher, dataset)
    live_logs = model.evaluate(dataset.batch(8), return_dict=True, verbose=0)
    cached_logs = model.evaluate(cached.batch(8), return_dict=True, verbose=0)
    for key, value in live_logs.items():
        assert cached_logs[key] == pytest.approx(value, rel=1e-6)


def _nondeterministic(dataset):
    options = tf.data.Options()
    options.deterministic = False
    return dataset.with_options(options)


@pytest.mark.parametrize(
    "transform, message",
    [
        (
            lambda d: d.shuffle(8),
            r"Invalid value for argument `data`. Expected a deterministic "
            r"dataset without shuffling or random augmentation.*"
            r"Received: a dataset with \['ShuffleDatasetV3'\]",
        ),
        (
            lambda d: d.map(
                lambda x, y, w: (x + tf.random.normal(tf.shape(x)), y, w)
            ),
            r"Received: a dataset with \['RandomStandardNormal'\]",
        ),
        (
            lambda d: d.repeat(),
            r"Invalid value for argument `data`. Expected a finite dataset",
        ),
        (
            _nondeterministic,
            r"Received: a dataset with `options\(\).deterministic=False`",
        ),
    ],
)
def test_nondeterministic_datasets_are_refused(transform, message):
    with pytest.raises(ValueError, match=message):
        keras_sft.cache_teacher_outputs(helpers.mlp(), transform(_examples()))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"teacher": "t.keras"},
            r"Invalid value for argument `teacher`. Expected a `keras.Model` "
            r"instance. Received: teacher='t.keras'",
        ),
        (
            {"data": [1, 2]},
            r"Invalid value for argument `data`. Expected a "
            r"`tf.data.Dataset` or a tuple `\(x, y\)` or "
            r"`\(x, y, sample_weight\)` of arrays. Received: data=\[1, 2\]",
        ),
        (
            {"data": (np.zeros((4, 2)), np.zeros(3))},
            r"Invalid value for argument `data`. Expected arrays with the "
            r"same number \(> 0\) of examples along their first axis. "
            r"Received: data with first dimensions \[4, 3\]",
        ),
        (
            {"data": (np.zeros((0, 2)), np.zeros(0))},
            r"Received: data with first dimensions \[0, 0\]",
        ),
        (
            {"data": (np.zeros((2, 2)), [0, 1])},
            r"Invalid value for argument `data`. Expected NumPy arrays or "
            r"tensors in `\(x, y\[, sample_weight\]\)`. Received: data "
            r"with leaves of types \['int', 'ndarray'\]",
        ),
        (
            {"batch_size": 0},
            r"Invalid value for argument `batch_size`. Expected an int > 0. "
            r"Received: batch_size=0",
        ),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    arguments = {"teacher": helpers.mlp(), "data": _examples()} | kwargs
    with pytest.raises(ValueError, match=message):
        keras_sft.cache_teacher_outputs(**arguments)


def _two_inputs_two_outputs():
    init = keras.initializers.GlorotUniform
    inputs = [keras.Input((5,)), keras.Input((3,))]
    hidden = keras.layers.Dense(8, "relu", kernel_initializer=init(0))(
        keras.layers.Concatenate()(inputs)
    )
    outputs = [
        keras.layers.Dense(3, name="first", kernel_initializer=init(1))(hidden),
        keras.layers.Dense(2, name="second", kernel_initializer=init(2))(
            hidden
        ),
    ]
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("arrays", [False, True])
def test_list_inputs_and_outputs_are_cached_apart(arrays):
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(24, 5)), rng.normal(size=(24, 3))]
    x = [a.astype("float32") for a in x]
    y = [rng.integers(0, 3, 24), rng.integers(0, 2, 24)]
    examples = tf.data.Dataset.from_tensor_slices((tuple(x), tuple(y)))

    def fit(cache):
        keras.utils.set_random_seed(0)
        student = _two_inputs_two_outputs()
        model = keras_sft.SFTModel(
            student,
            teacher=helpers.perturbed_copy(student),
            lambda_=1.0,
            distance="mse",
        )
        model.compile(optimizer=keras.optimizers.SGD(0.2))
        data = examples
        if cache:
            data = keras_sft.cache_teacher_outputs(
                model.teacher, (x, y) if arrays else examples, batch_size=5
            )
        model.fit(data.batch(8), epochs=2, shuffle=False, verbose=0)
        return model.student.get_weights()

    for a, b in zip(fit(cache=True), fit(cache=False), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
