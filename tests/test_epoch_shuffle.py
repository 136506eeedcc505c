import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sft.epoch_shuffle import EpochShuffle


def _order(shuffle, dataset, epoch):
    shuffle.on_epoch_begin(epoch)
    return np.concatenate(list(shuffle(dataset).batch(4).as_numpy_iterator()))


def test_order_depends_on_seed_and_epoch_only():
    dataset = tf.data.Dataset.range(20)
    first, second = EpochShuffle(seed=3), EpochShuffle(seed=3)
    orders = [_order(first, dataset, epoch) for epoch in range(3)]
    for order in orders:
        assert sorted(order) == list(range(20))  # a permutation
    assert not np.array_equal(orders[0], orders[1])
    # A new object (a resumed run) asked for epoch 2 directly, then 0.
    np.testing.assert_array_equal(_order(second, dataset, 2), orders[2])
    np.testing.assert_array_equal(_order(second, dataset, 0), orders[0])
    assert not np.array_equal(
        _order(EpochShuffle(seed=4), dataset, 0), orders[0]
    )


def test_keeps_known_cardinality():
    shuffled = EpochShuffle(seed=0)(tf.data.Dataset.range(10))
    assert int(shuffled.cardinality()) == 10


def test_fit_trains_each_epoch_on_that_epochs_order():
    seen = []

    def record(value):
        seen.append(int(value))
        return value

    shuffle = EpochShuffle(seed=1)
    recorded = shuffle(tf.data.Dataset.range(8)).map(
        lambda i: tf.ensure_shape(tf.py_function(record, [i], tf.int64), ())
    )
    features = recorded.map(
        lambda i: (tf.cast(i, "float32")[None], tf.cast(i, "float32"))
    )
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    # Starting at epoch 1, as a run resumed by BackupAndRestore does.
    model.fit(
        features.batch(8),
        epochs=3,
        initial_epoch=1,
        shuffle=False,
        callbacks=[shuffle],
        verbose=0,
    )
    reference = EpochShuffle(seed=1)
    for epoch, order in ((1, seen[-16:-8]), (2, seen[-8:])):
        expected = _order(reference, tf.data.Dataset.range(8), epoch)
        np.testing.assert_array_equal(order, expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"seed": -1},
            r"argument `seed`. Expected an int >= 0. "
            r"Received: seed=-1",
        ),
        (
            {"seed": 0, "buffer_size": 0},
            r"argument `buffer_size`. Expected "
            r"an int > 0. Received: buffer_size=0",
        ),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpochShuffle(**kwargs)
