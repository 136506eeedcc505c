"""Which process of a multi-worker run writes the run's files."""

import tensorflow as tf


def is_chief(strategy_name):
    """Whether this process writes the outputs of a run under the strategy
    `strategy_name` (a `keras_sft.strategy.STRATEGIES` name).

    Under `"multi_worker"` only the chief of `TF_CONFIG`'s cluster writes:
    its `chief` task, or worker 0 where the cluster has none (the rule of
    `tf.distribute.MultiWorkerMirroredStrategy`, whose
    `extended.should_checkpoint` says the same once it is built). Under any
    other strategy the one process writes.
    """
    if strategy_name != "multi_worker":
        return True
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    jobs = resolver.cluster_spec().jobs
    if not jobs:
        return True  # No cluster: one worker, on its own.
    if "chief" in jobs:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def task_name():
    """This process's task in `TF_CONFIG` (`"worker 1"`), for messages."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return f"{resolver.task_type} {resolver.task_id}"
