"""EpochShuffle: a reshuffling order fixed by the seed and the epoch."""

import keras
import tensorflow as tf

from keras_sft import _checks


class EpochShuffle(keras.callbacks.Callback):
    """Shuffles a dataset anew each epoch, in an order fixed by seed and epoch.

    `dataset.shuffle(seed=s, reshuffle_each_iteration=True)` draws epoch
    `k`'s order from the `k`-th iteration of the dataset object. A run that
    resumes from a `keras.callbacks.BackupAndRestore` backup at epoch `k`
    rebuilds the dataset, so it replays epoch 0's order and ends with other
    weights than the uninterrupted run. `EpochShuffle` keys the order on the
    epoch number instead: as a callback it records the epoch that `fit` is
    about to run (resumed runs included), and the dataset it returns reads
    that number each time `fit` starts iterating it.

    Pass the same object to `fit`'s callbacks; without it every epoch gets
    epoch 0's order.

    Example:

    ```python
    shuffle = EpochShuffle(seed=0)
    train = shuffle(dataset).batch(32)
    model.fit(train, epochs=10, callbacks=[shuffle, backup_and_restore])
    ```

    Args:
        seed: Int >= 0, the seed of every epoch's order.
        buffer_size: Int > 0, the shuffle buffer; at least the dataset size
            for a uniform shuffle. Defaults to `10_000`.
    """

    def __init__(self, seed, buffer_size=10_000):
        super().__init__()
        _checks.check_int("seed", seed, minimum=0)
        _checks.check_int("buffer_size", buffer_size, minimum=1)
        self.seed = seed
        self.buffer_size = buffer_size
        # On the host, where the input pipeline reads it.
        with tf.init_scope(), tf.device("CPU:0"):
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)

    def __call__(self, dataset):
        """Returns `dataset` shuffled in the order of the current epoch."""

        def shuffled(_):
            # With a global seed of 0 set (`keras.utils.set_random_seed(0)`),
            # `shuffle` compares a tensor seed with 0 in Python and fails.
            # This graph needs no global seed: the op seed fixes the order.
            tf.compat.v1.get_default_graph().seed = None
            # A large odd multiplier keeps (seed, epoch) pairs from colliding.
            seed = self.seed * 1_000_003 + self.epoch.read_value()
            return dataset.shuffle(self.buffer_size, seed=seed)

        reshuffled = tf.data.Dataset.from_tensors(0).flat_map(shuffled)
        # `flat_map` hides the length; Keras needs it to size its epochs.
        cardinality = dataset.cardinality()
        if cardinality >= 0:
            reshuffled = reshuffled.apply(
                tf.data.experimental.assert_cardinality(cardinality)
            )
        return reshuffled

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)
