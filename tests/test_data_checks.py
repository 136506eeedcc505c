import numpy as np
import pytest
import tensorflow as tf

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
def test_non_finite_inputs_are_refused(value):
    x, y, _ = helpers.classification_data()
    x[1, 2] = value
    with pytest.raises(
        ValueError,
        match=r"The inputs contain 1 NaN or Inf values in the first batch; "
        r"clean or impute",
    ):
        check_dataset(_dataset(x, y), helpers.mlp())


def test_input_shape_mismatch_is_refused():
    x, y, _ = helpers.classification_data(input_dim=5)
    with pytest.raises(
        ValueError,
        match=r"Input shape \(5,\) does not match the model's input shape "
        r"\(6,\); reshape the data",
    ):
        check_dataset(_dataset(x, y), helpers.mlp(input_dim=6))


def test_empty_dataset_is_refused():
    x, y, _ = helpers.classification_data()
    with pytest.raises(ValueError, match=r"The dataset is empty"):
        check_dataset(_dataset(x, y).take(0), helpers.mlp())


def test_unbatched_structure_is_refused():
    x, _, _ = helpers.classification_data()
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(8)
    with pytest.raises(ValueError, match=r"Expected batches of \(x, y\)"):
        check_dataset(dataset, helpers.mlp())
