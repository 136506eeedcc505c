"""Private: the anchored training data of `SFTModel.fit(anchor_x=...)`.

Keras's own adapter of the training data is zipped with an endless stream
of anchor batches, and each batch's inputs are packed with its anchors
(`_batch.with_anchors`), so that Keras's distribution splits both across
replicas.
"""

import functools

import keras
import tensorflow as tf

from keras_sft import _batch
from keras_sft import _keras_compat


def anchor_batches(model, anchor_x, *, batch_size, reads):
    """An endless dataset of anchor batches, each a dict with `"inputs"`
    (and the teacher's `"teacher_outputs"` where they are cached)."""
    if isinstance(anchor_x, tf.data.Dataset):
        return anchor_x.map(
            lambda *data: {
                "inputs": keras.utils.unpack_x_y_sample_weight(
                    data[0] if len(data) == 1 else data
                )[0]
            }
        ).repeat()
    anchor_x = keras.tree.lists_to_tuples(anchor_x)
    count = int(keras.tree.flatten(anchor_x)[0].shape[0])
    examples = {"inputs": anchor_x}
    if _caches_anchor_outputs(model, count, reads):
        outputs = model.teacher.predict(
            anchor_x, batch_size=max(batch_size, 32), verbose=0
        )
        examples["teacher_outputs"] = keras.tree.lists_to_tuples(outputs)
    # Reshuffled at each pass, whatever `fit`'s `shuffle` (which is about
    # the labelled data): each epoch starts a new pass over the anchors, and
    # in a fixed order a set longer than an epoch's reads would never be
    # read past its first batches. Batches run across the end of the set,
    # so that every batch is full and the anchors are read evenly, however
    # their number compares with the batch size.
    dataset = tf.data.Dataset.from_tensor_slices(examples)
    dataset = dataset.shuffle(count, reshuffle_each_iteration=True)
    return dataset.repeat().batch(batch_size, drop_remainder=True)


def _caches_anchor_outputs(model, count, reads):
    """Whether to compute the teacher's outputs on array anchors once."""
    return (
        model.cache_teacher
        # The pass reads each anchor once: it pays when training reads
        # them more often (or an unknown number of times).
        and (reads is None or reads > count)
        # Cached outputs hold no intermediate features.
        and model.distill_features is None
        and model.lambda_ != 0.0
        and not _keras_compat.in_multi_worker_mode(model.distribute_strategy)
    )


def anchor_reads(adapter, arguments, batch_size):
    """Anchors read by the whole `fit`, `None` where unknown."""
    steps = arguments.get("steps_per_epoch") or adapter.num_batches
    if steps is None or batch_size is None:
        return None
    epochs = arguments.get("epochs", 1) - arguments.get("initial_epoch", 0)
    return steps * epochs * batch_size


def first_batch_size(adapter):
    """The size of the first batch of `adapter`'s data."""
    first = next(iter(adapter.get_tf_dataset().take(1)))
    x = keras.utils.unpack_x_y_sample_weight(first)[0]
    return int(keras.tree.flatten(x)[0].shape[0])


class AnchoredData(_keras_compat.DataAdapter):
    """Keras's adapter of the training data, its batches packed with
    anchors; epoch sizes and epoch hooks are the wrapped adapter's."""

    def __init__(self, adapter, anchor_batches, mode):
        self._adapter = adapter
        self.anchor_batches = anchor_batches
        self._mode = mode

    def get_tf_dataset(self):
        return tf.data.Dataset.zip(
            self._adapter.get_tf_dataset(), self.anchor_batches
        ).map(functools.partial(_batch.with_anchors, self._mode))

    @property
    def num_batches(self):
        return self._adapter.num_batches

    @property
    def batch_size(self):
        return self._adapter.batch_size

    @property
    def has_partial_batch(self):
        return self._adapter.has_partial_batch

    @property
    def partial_batch_size(self):
        return self._adapter.partial_batch_size

    def on_epoch_begin(self):
        self._adapter.on_epoch_begin()

    def on_epoch_end(self):
        self._adapter.on_epoch_end()
