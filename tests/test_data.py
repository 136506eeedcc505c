import gzip
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn import datasets as sklearn_datasets
from tensorflow_datasets.image_classification import mnist

from keras_sft import data


def _arrays(dataset):
    images, labels = zip(*dataset.as_numpy_iterator(), strict=True)
    return np.stack(images), np.array(labels)


def _sorted_rows(images):
    flat = images.reshape(len(images), -1)
    return flat[np.lexsort(flat.T[::-1])]


def test_digits_splits_are_the_scaled_sklearn_digits():
    train_images, train_labels = _arrays(data.load("digits", split="train")[0])
    test_images, test_labels = _arrays(data.load("digits", split="test")[0])
    digits = sklearn_datasets.load_digits()
    assert train_images.shape == (1257, 8, 8, 1)
    assert test_images.shape == (540, 8, 8, 1)
    assert train_images.dtype == np.float32
    assert train_labels.dtype == np.int32
    # Together the two splits are every digit, once, divided by 16.
    both = np.concatenate([train_images, test_images])
    np.testing.assert_array_equal(
        _sorted_rows(both), _sorted_rows(digits.images / 16.0)
    )
    np.testing.assert_array_equal(
        np.bincount(np.concatenate([train_labels, test_labels])),
        np.bincount(digits.target),
    )
    assert both.min() == 0.0 and both.max() == 1.0
    # Shuffled before the cut: every class is in both splits.
    assert set(train_labels) == set(test_labels) == set(range(10))


def test_digits_split_slices_follow_tfds_syntax():
    train, _ = _arrays(data.load("digits", split="train")[0])
    first, _ = _arrays(data.load("digits", split="train[:50%]")[0])
    second, _ = _arrays(data.load("digits", split="train[50%:]")[0])
    np.testing.assert_array_equal(np.concatenate([first, second]), train)
    assert len(first) == 628


def test_digits_unknown_split_is_refused():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `split`. Expected a split of "
        r"\('train', 'test'\) in TFDS syntax \(such as 'train\[:50%\]'\). "
        r"Received: split='validation'",
    ):
        data.load("digits", split="validation")


def test_tfds_images_are_scaled_to_unit_range():
    with tfds.testing.mock_data(num_examples=6):
        dataset, num_classes = data.load("mnist", split="train")
        images, labels = _arrays(dataset)
    assert num_classes == 10
    assert images.shape == (6, 28, 28, 1)
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert images.min() >= 0.0 and images.max() <= 1.0
    # uint8 values divided by 255, nothing else.
    np.testing.assert_allclose(
        images * 255.0, np.round(images * 255.0), atol=1e-4
    )


def test_rescaling_is_the_scaling_of_the_pipeline():
    images, _ = _arrays(data.load("digits", split="train+test")[0])
    raw = sklearn_datasets.load_digits().images[..., np.newaxis]
    np.testing.assert_array_equal(
        _sorted_rows(data.rescaling("digits")(raw).numpy()),
        _sorted_rows(images),
    )
    assert data.rescaling("mnist").scale == pytest.approx(1 / 255)


def test_pipeline_and_rescaling_read_one_constant(monkeypatch):
    # Changing the one definition changes both what `load` gives and what
    # the export applies.
    monkeypatch.setitem(data.MAX_INTENSITY, "digits", 8.0)
    monkeypatch.setattr(data, "UINT8_MAX_INTENSITY", 128.0)
    images, _ = _arrays(data.load("digits", split="train+test")[0])
    digits = sklearn_datasets.load_digits()
    np.testing.assert_array_equal(
        _sorted_rows(images), _sorted_rows(digits.images / 8.0)
    )
    assert data.rescaling("digits").scale == 1 / 8.0
    with tfds.testing.mock_data(num_examples=6):
        tfds_images, _ = _arrays(data.load("mnist", split="train")[0])
        (raw,) = [
            image
            for image, _ in tfds.as_numpy(
                tfds.load("mnist", split="train", as_supervised=True).batch(6)
            )
        ]
    np.testing.assert_allclose(tfds_images, raw / 128.0, rtol=1e-6)
    assert data.rescaling("mnist").scale == 1 / 128.0


def _write_idx(path, array):
    """Writes `array` (uint8) as a gzipped IDX file, MNIST's format."""
    header = (
        bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    )
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_tfds_downloads_and_prepares_a_dataset_offline(tmp_path, monkeypatch):
    # TFDS's own download-and-prepare path (download manager, MNIST's
    # builder, TFRecord writing), fed MNIST's four files from a local
    # directory: its downloader copies any URL that is not http(s).
    source = tmp_path / "source"
    source.mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for split, prefix, size in (("train", "train", 6), ("test", "t10k", 4)):
        images = rng.integers(0, 256, (size, 28, 28))
        labels = np.arange(size) % 10
        _write_idx(source / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", labels)
        expected[split] = images, labels
    monkeypatch.setattr(mnist.MNIST, "URL", f"{source}{os.sep}")
    monkeypatch.setattr(mnist, "_TRAIN_EXAMPLES", 6)
    monkeypatch.setattr(mnist, "_TEST_EXAMPLES", 4)
    data_dir = str(tmp_path / "tfds")

    for split, (images, labels) in expected.items():
        dataset, num_classes = data.load(
            "mnist", split=split, data_dir=data_dir
        )
        got_images, got_labels = _arrays(dataset)
        assert num_classes == 10
        # TFDS shuffles the examples when it writes them: compare as sets.
        order = np.argsort(got_labels)
        np.testing.assert_array_equal(got_labels[order], labels)
        np.testing.assert_allclose(
            got_images[order][..., 0] * 255.0, images, atol=1e-3
        )
    assert (
        tfds.builder("mnist", data_dir=data_dir)
        .info.splits["train"]
        .num_examples
        == 6
    )


def _toy(labels):
    labels = np.asarray(labels, "int32")
    images = np.random.default_rng(0).uniform(size=(len(labels), 3, 4, 1))
    return tf.data.Dataset.from_tensor_slices(
        (images.astype("float32"), labels)
    )


def test_select_classes_keeps_exactly_those_classes():
    labels = np.array([0, 5, 1, 5, 9, 2, 0, 7])
    images, kept = _arrays(data.select_classes(_toy(labels), [0, 5]))
    np.testing.assert_array_equal(kept, labels[np.isin(labels, [0, 5])])
    all_images, _ = _arrays(_toy(labels))
    np.testing.assert_array_equal(images, all_images[np.isin(labels, [0, 5])])


@pytest.mark.parametrize("classes", [[], [1, -2], [1.5]])
def test_select_classes_refuses_bad_classes(classes):
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `classes`. Expected a non-empty "
        r"sequence of ints >= 0. Received: classes=",
    ):
        data.select_classes(_toy([0]), classes)


@pytest.mark.parametrize(
    "shift, expected",
    [
        ("none", lambda image: image),
        ("invert", lambda image: 1.0 - image),
        ("rot90", lambda image: np.rot90(image, k=1, axes=(0, 1))),
    ],
)
def test_shift_domain_does_what_it_says(shift, expected):
    labels = [3, 1, 4]
    images, _ = _arrays(_toy(labels))
    shifted, shifted_labels = _arrays(data.shift_domain(_toy(labels), shift))
    np.testing.assert_array_equal(shifted_labels, labels)
    np.testing.assert_allclose(
        shifted, np.stack([expected(i) for i in images]), atol=1e-7
    )


def test_shift_domain_refuses_unknown_shift():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `shift`. Expected one of "
        r"\('none', 'invert', 'rot90'\). Received: shift='blur'",
    ):
        data.shift_domain(_toy([0]), "blur")


def _order(dataset):
    return np.concatenate([labels for _, labels in dataset.as_numpy_iterator()])


def test_batch_shuffles_deterministically_with_a_seed():
    labels = np.arange(40)
    first = data.batch(_toy(labels), batch_size=8, shuffle_seed=3)
    again = data.batch(_toy(labels), batch_size=8, shuffle_seed=3)
    other = data.batch(_toy(labels), batch_size=8, shuffle_seed=4)
    epoch_one = _order(first)
    np.testing.assert_array_equal(epoch_one, _order(again))
    assert sorted(epoch_one) == list(labels)
    assert not np.array_equal(epoch_one, labels)
    assert not np.array_equal(epoch_one, _order(other))
    # A new order at each epoch.
    assert not np.array_equal(epoch_one, _order(first))


def test_batch_without_seed_keeps_the_order():
    dataset = data.batch(_toy(np.arange(10)), batch_size=4)
    batches = [labels for _, labels in dataset.as_numpy_iterator()]
    assert [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(10))


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_batch_refuses_bad_batch_size(batch_size):
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `batch_size`. Expected an int > "
        r"0. Received: batch_size=",
    ):
        data.batch(_toy([0]), batch_size=batch_size)


def test_select_classes_knows_its_size():
    labels = np.array([0, 5, 1, 5, 9])
    selected = data.select_classes(_toy(labels), [5, 9])
    assert int(selected.cardinality()) == 3
