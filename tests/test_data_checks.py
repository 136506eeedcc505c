"""`keras_sft.check_dataset` and the label rules of the data checks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sft import data_checks
from keras_sft.data_checks import check_dataset
from tests import helpers


def _dataset(x, y, batch_size=8):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def test_good_data_passes():
    x, y, w = helpers.classification_data()
    check_dataset(_dataset(x, y), helpers.mlp())
    weighted = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(8)
    check_dataset(weighted, helpers.mlp())


@pytest.mark.parametrize(
    "label, message",
    [
        (
            3,
            r"The labels must be < 3, the model's number of classes; the "
            r"first batch holds 3; use a model with as many outputs",
        ),
        (-1, r"The labels must be >= 0; the first batch holds -1; encode"),
    ],
)
def test_labels_out_of_range_are_refused(label, message):
    x, y, _ = helpers.classification_data()
    y[2] = label
    with pytest.raises(ValueError, match=message):
        check_dataset(_dataset(x, y), helpers.mlp(classes=3))


def test_fractional_labels_are_refused():
    x, _, _ = helpers.classification_data()
    y = np.full(len(x), 0.5, "float32")
    with pytest.raises(ValueError, match=r"must be integer class indices"):
        check_dataset(_dataset(x, y), helpers.mlp())


def test_explicit_num_classes_is_used():
    x, y, _ = helpers.classification_data(classes=3)
    y[0] = 2
    with pytest.raises(ValueError, match=r"must be < 2"):
        check_dataset(_dataset(x, y), helpers.mlp(), num_classes=2)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_inputs_are_the_models_business(value):
    x, y, _ = helpers.classification_data()
    x[1, 2] = value
    check_dataset(_dataset(x, y), helpers.mlp())
    strings = tf.constant([["red"]] * len(y))
    lookup = keras.Sequential(
        [keras.Input((1,), dtype="string"), keras.layers.StringLookup()]
    )
    check_dataset(_dataset(strings, y), lookup, class_labels=False)


def test_string_labels_are_refused_in_one_line():
    x, y, _ = helpers.classification_data()
    with pytest.raises(
        ValueError,
        match=r"^The labels must be integer class indices; the first batch "
        r"holds object values such as \[b'\d', b'\d', b'\d'\]; encode each "
        r"label as an integer class index \(a StringLookup layer maps "
        r"strings to indices\)\.$",
    ):
        check_dataset(_dataset(x, y.astype(str)), helpers.mlp())


def test_negative_sample_weights_are_refused():
    x, y, weights = helpers.classification_data()
    weights[3] = -0.5
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8)
    with pytest.raises(
        ValueError,
        match=r"^The sample weights must be >= 0; the first batch holds "
        r"-0\.5; weigh each example by a number >= 0\.$",
    ):
        check_dataset(dataset, helpers.mlp())


def test_input_shape_mismatch_is_refused():
    x, y, _ = helpers.classification_data(input_dim=5)
    with pytest.raises(
        ValueError,
        match=r"Input shape \(5,\) does not match the model's input shape "
        r"\(6,\); reshape the data",
    ):
        check_dataset(_dataset(x, y), helpers.mlp(input_dim=6))


def test_input_shapes_keras_adapts_pass():
    tokens = np.zeros((8, 4), "int32")
    y = np.zeros(8, "int32")
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(5, 3)(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)
    model = keras.Model(inputs, keras.layers.Dense(3)(pooled))
    check_dataset(_dataset(tokens, y), model)
    x, y, _ = helpers.classification_data()
    check_dataset(_dataset(x[..., None], y), helpers.mlp())


def test_empty_dataset_is_refused():
    x, y, _ = helpers.classification_data()
    with pytest.raises(ValueError, match=r"The dataset is empty"):
        check_dataset(_dataset(x, y).take(0), helpers.mlp())


def test_unbatched_structure_is_refused():
    x, _, _ = helpers.classification_data()
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(8)
    with pytest.raises(ValueError, match=r"Expected batches of \(x, y\)"):
        check_dataset(dataset, helpers.mlp())


def _custom_loss(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)


class _CustomLoss(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return _custom_loss(y_true, y_pred)


@pytest.mark.parametrize(
    ("loss", "rule"),
    [
        (
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            ("SparseCategoricalCrossentropy", True, None),
        ),
        (
            keras.losses.SparseCategoricalCrossentropy(ignore_class=-1),
            ("SparseCategoricalCrossentropy", True, -1),
        ),
        (
            "sparse_categorical_crossentropy",
            ("sparse_categorical_crossentropy", True, None),
        ),
        ({"logits": "mse"}, ("mean_squared_error", False, None)),
        (
            keras.losses.BinaryCrossentropy(),
            ("BinaryCrossentropy", False, None),
        ),
        (_custom_loss, None),
        (_CustomLoss(), None),
        ("not_a_loss", None),
    ],
)
def test_label_rules_follow_kerass_own_losses(loss, rule):
    expected = None if rule is None else data_checks.LabelRule(*rule)
    assert data_checks.label_rule(loss, ["logits"]) == expected


def test_several_outputs_have_no_label_rule():
    assert data_checks.label_rule("mse", ["a", "b"]) is None


@pytest.mark.parametrize(
    ("weight_shape", "output_shape", "broadcasts"),
    [
        ((8,), (None, 3), True),
        ((8, 1), (None, 3), True),
        ((8, 3), (None, 3), False),
        ((8, 5), (None, None, 7), True),
        ((8, 5, 1), (None, 5, 7), True),
        ((8, 4), (None, 5, 7), False),
        ((8,), (None, 4, 4, 2), True),
        ((8, 4, 4), (None, 4, 4, 2), True),
        ((8, 1, 1), (None, 4, 4, 2), True),
        ((8, 4), (None, 4, 4, 2), False),
    ],
)
def test_sample_weights_must_broadcast_to_the_loss_per_example(
    weight_shape, output_shape, broadcasts
):
    error = data_checks._weight_shape_error(weight_shape, output_shape)
    assert (error is None) == broadcasts


def test_a_weight_shape_of_unknown_rank_is_left_to_the_step():
    # A step retraced with `reduce_retracing` sees such shapes.
    unknown = tf.TensorShape(None)
    assert data_checks._weight_shape_error(unknown, (None, 3)) is None
    assert data_checks._weight_shape_error((8, 3), unknown) is None
