"""Building a `tf.distribute` strategy from its name."""

import tensorflow as tf

from keras_sft import _checks

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def build_strategy(name="default", *, devices=None, tpu=None):
    """Returns the `tf.distribute.Strategy` that `name` stands for.

    Build the model, its teacher and its optimizer inside
    `strategy.scope()`, and batch the data with the global batch size: each
    replica then gets `global_batch_size / num_replicas_in_sync` samples.

    Example:

    ```python
    strategy = build_strategy("mirrored")
    with strategy.scope():
        model = keras_sft.SFTModel(keras.models.load_model(path))
        model.compile(optimizer="adam")
    ```

    Args:
        name: String, one of `"default"` (the current strategy, one device),
            `"mirrored"` (`MirroredStrategy` over `devices`, or all local
            GPUs, or the CPU when there is none), `"multi_worker"`
            (`MultiWorkerMirroredStrategy`, cluster read from the `TF_CONFIG`
            environment variable) or `"tpu"` (`TPUStrategy` on the TPU at
            `tpu`). Defaults to `"default"`.
        devices: List of device names for `"mirrored"`, or `None` for all
            local GPUs. Defaults to `None`.
        tpu: String, the TPU address (`grpc://...`, a TPU name, or `"local"`
            on a TPU VM) for `"tpu"`. Defaults to `None` (`"local"`).

    Returns:
        A `tf.distribute.Strategy`.
    """
    _checks.check_one_of("name", name, STRATEGIES)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu or "local"
    )
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
