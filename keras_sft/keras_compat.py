"""Private: the places where keras-sft reaches into Keras or TF internals.

Each function works around a behaviour of Keras 3.15 / TensorFlow 2.21 and
says which, with the upstream issue where one is filed. `SFTModel`'s
overrides of private `keras.Model` hooks call these and nothing else, so
an upgrade of Keras is checked here first.
"""

import warnings

import keras
import tensorflow as tf
from keras import ops
from keras.src.trainers import data_adapters
from keras.src.trainers.data_adapters import array_slicing
from keras.src.utils import tracking
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.distribute import multi_worker_util
from tensorflow.python.eager import context


def in_multi_worker_mode(strategy):
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` over >1 worker."""
    # No public API tells one worker from several: the strategy's private
    # `extended._in_multi_worker_mode()` is what Keras's TF trainer reads.
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def bound_cluster_start(resolver, timeout):
    """Makes `MultiWorkerMirroredStrategy`'s start fail after `timeout`
    seconds, rather than wait an hour or more, while a task of the cluster
    of `resolver` has not started.

    Work-around for TensorFlow 2.21 (no upstream issue found): the strategy
    configures TensorFlow's coordination service itself unless one is
    configured already, with no way to pass its timeouts, and by default
    each task waits an hour to register with the service's leader (task
    0), which then waits for the others at a barrier of its own, without
    limit. The strategy's own configuration is set here before it starts,
    with the registration made a barrier of every task bounded by
    `timeout` (a `tf.errors.DeadlineExceededError` naming the missing
    tasks).
    """
    spec = resolver.cluster_spec()
    if resolver.task_type not in ("chief", "worker"):
        return  # The strategy coordinates these two jobs only.
    jobs = [
        coordination_config_pb2.CoordinatedJob(
            name=job, num_tasks=spec.num_tasks(job)
        )
        for job in ("chief", "worker")
        if job in spec.jobs
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=int(timeout * 1000),
    )
    # Not an argument of `configure_coordination_service`: every task
    # waits for all the others at registration, within the timeout.
    config = context.context().coordination_service
    config.cluster_register_with_barrier = True


def first_replica_batch(strategy, iterator=None, data_batch=None):
    """The first batch that Keras's symbolic build should see, or `None`.

    Work-around for Keras 3.15 (no upstream issue found): before building
    the compiled loss and metrics from the first batch's shapes,
    `keras.Model._maybe_symbolic_build` averages that batch over replicas
    with `strategy.reduce`, which `MultiWorkerMirroredStrategy` cannot do
    on per-replica data. One replica's part has the same shapes.
    """
    if iterator is not None and data_batch is None:
        for _, _, batches in iterator:
            data_batch = next(batches)
            break
    if data_batch is None:
        return None
    return keras.tree.map_structure(
        lambda value: (
            strategy.experimental_local_results(value)[0]
            if isinstance(value, tf.distribute.DistributedValues)
            else value
        ),
        data_batch,
    )


def reducible_logs(strategy, logs):
    """A step's logs in the shape Keras can reduce under `strategy`."""
    # Under multiple workers Keras reduces each returned log with
    # `strategy.reduce("MEAN", value, axis=0)`, which rejects scalars
    # (keras-team/keras#20585); a leading axis of one reduces to the
    # same scalar mean.
    if not in_multi_worker_mode(strategy):
        return logs
    return {key: ops.expand_dims(value, 0) for key, value in logs.items()}


def accumulate(tracker, mean, count):
    """Adds the scalar `mean` of `count` samples to a `keras.metrics.Mean`."""
    # The sums `Mean.update_state(mean, sample_weight=count)` makes, on the
    # metric's `total` and `count` variables (attributes of Keras's
    # `Reduce` metric, not documented API), without its broadcasting and
    # reductions: 16 graph ops fewer per tracker, which counts when a step
    # of a small model takes a few milliseconds.
    tracker.total.assign_add(ops.cast(mean, tracker.dtype) * count)
    tracker.count.assign_add(count)


def restore_compile(model, config):
    """`keras.Model.compile_from_config` for a model that overrides compile."""
    # Work-around for Keras 3.15 behaviour (no upstream issue found): on
    # load, Keras skips `compile_from_config` for models that override
    # `compile`, since their signature may differ. `SFTModel.compile` keeps
    # Keras's signature, so the saved compile arguments apply as they are.
    model.compile(**keras.saving.deserialize_keras_object(config))
    if model.built:
        model.optimizer.build(model.trainable_variables)


# Keras's base class of its input adapters. `keras.Model.fit` takes an
# instance as `x` and uses it as it is (Keras 3.15's `get_data_adapter`
# lets custom adapters through), so `keras_sft.anchors` wraps Keras's own
# adapter of the user's data and keeps its epoch sizes and hooks.
DataAdapter = data_adapters.data_adapter.DataAdapter


def data_adapter(
    x, y, sample_weight, batch_size, steps_per_epoch, shuffle, class_weight
):
    """Keras's adapter of `fit`'s data, as `keras.Model.fit` builds it."""
    # No public API returns it; `fit` builds it in its epoch iterator from
    # these very arguments (arrays, datasets, generators, `PyDataset`).
    return data_adapters.get_data_adapter(
        x=x,
        y=y,
        sample_weight=sample_weight,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        shuffle=shuffle,
        class_weight=class_weight,
    )


def train_validation_split(arrays, validation_split):
    """`keras.Model.fit`'s `validation_split`: the last fraction of arrays."""
    # The private helper `fit` itself calls, so that the split, its order
    # and its error for non-arrays are Keras's.
    return array_slicing.train_validation_split(
        arrays, validation_split=validation_split
    )


def apply_gradients(optimizer, gradients, trainable_weights):
    """Applies `gradients`, or warns as Keras does when nothing is trainable."""
    # Keras's own `train_step` (keras/src/backend/tensorflow/trainer.py)
    # skips the update with this warning for a model with no trainable
    # weights (`model.trainable = False`); `apply_gradients` of an empty
    # list fails ("not enough values to unpack").
    if not trainable_weights:
        warnings.warn(
            "The model does not have any trainable weights.", stacklevel=2
        )
        return
    optimizer.apply_gradients(zip(gradients, trainable_weights, strict=True))


def output_layer(model):
    """The layer that makes a Functional or Sequential model's single
    output (Keras records it only in the output tensor's private history)."""
    if isinstance(model, keras.Sequential):
        return model.layers[-1]
    return model.outputs[0]._keras_history.operation


def own_weights(layer):
    """`layer`'s own weights (not its sublayers'): `(trainable, other)`."""
    # Keras 3.15 keeps them in these two tracker lists, in creation order,
    # which is the order `save_own_variables` of a generic layer writes.
    return layer._trainable_variables, layer._non_trainable_variables


def replace_weight(layer, old, new):
    """Makes `layer` compute with the variable `new` wherever it used `old`.

    `new` takes `old`'s place in the layer's tracker list, so the layer's
    weight order (which saving relies on) stays as it was.
    """
    # No public API swaps a built layer's variable. Attribute assignment
    # outside `DotNotTrackScope` would append `new` to the tracker list.
    with tracking.DotNotTrackScope():
        for name, value in list(vars(layer).items()):
            if value is old:
                setattr(layer, name, new)
    for weights in own_weights(layer):
        for index, weight in enumerate(weights):
            if weight is old:
                weights[index] = new


def lora_adapters(layer):
    """The LoRA adapter variables of `layer` (`[]` where LoRA is off)."""
    # Keras 3.15's `enable_lora` (Dense, EinsumDense, Embedding, the
    # convolutions) adds weights named `lora_*_a` and `lora_*_b`.
    if not getattr(layer, "lora_enabled", False):
        return []
    trainable, other = own_weights(layer)
    return [w for w in trainable + other if w.name.startswith("lora_")]


def disable_lora(layer):
    """Removes `layer`'s LoRA adapters: it computes with its base weights."""
    # Keras has no `disable_lora`. With `lora_rank=None` the layer's
    # config and saving are those of a layer that never had LoRA.
    adapters = lora_adapters(layer)
    for name, value in list(vars(layer).items()):
        if any(value is adapter for adapter in adapters):
            # `Layer.__delattr__` also drops the variable from its tracker.
            delattr(layer, name)
    layer.lora_enabled = False
    layer.lora_rank = None
    layer.lora_alpha = None


def all_layers(layer, include_self=True):
    """`layer` and every layer nested in it, in Keras's own order."""
    # Keras lists nested layers with the private `_flatten_layers`; the
    # public `layers` stops at the first level.
    return list(layer._flatten_layers(include_self=include_self))


def functional_graph(model):
    """`(inputs, outputs, nodes_by_depth)` of a Functional model's graph (a
    Sequential model's inner one): the input and output structures, and
    the nodes by depth, consumers before producers. `None` for a
    subclassed model. Keras keeps all three in private attributes."""
    graph = getattr(model, "_functional", None) or model
    if not hasattr(graph, "_nodes_by_depth"):
        return None
    return graph._inputs_struct, graph._outputs_struct, graph._nodes_by_depth


def producing_node(tensor):
    """The graph node that made the symbolic `tensor`, and the tensor's
    index among its outputs (from the tensor's private history)."""
    operation, node_index, tensor_index = tensor._keras_history
    return operation._inbound_nodes[node_index], tensor_index


def is_random_or_training_dependent(layer):
    """Whether `layer`'s own computation may differ between training and
    inference beyond `BatchNormalization`: it draws random numbers (Keras
    layers keep their seed generators privately), or it is another
    library's layer (not a nested Functional model) whose `call` takes
    `training`."""
    if getattr(layer, "_seed_generators", None):
        return True
    if type(layer).__module__.startswith("keras."):
        return False
    return not hasattr(layer, "_nodes_by_depth") and getattr(
        layer, "_call_has_training_arg", True
    )


def set_initial_epoch(model, epoch):
    """Makes the next `fit` of `model` start at `epoch`, as a restored
    backup does."""
    # `keras.callbacks.BackupAndRestore` (checked on Keras 3.15) sets this
    # private attribute, which `fit` reads once its callbacks have begun.
    model._initial_epoch = epoch
