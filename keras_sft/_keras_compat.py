"""Private: every place where keras-sft reaches into Keras or TF internals.

Each entry uses a private Keras or TensorFlow name (`keras.src`,
`tf.__internal__`, an attribute or hook with a leading underscore), says
why no public API serves, names the upstream issue where one is filed,
and the versions it was checked on: all were checked on Keras 3.15.1 with
TensorFlow 2.21.0, the versions `setup.cfg` allows (`KERAS_VERSIONS`). A
Keras upgrade is checked against this file first;
`tests/test_keras_compat.py` keeps private names out of every other
module.
"""

import contextlib
import functools
import io
import os
import sys
import warnings
import weakref

import keras
import tensorflow as tf
from keras import ops
from keras.src.backend import compute_output_spec
from keras.src.callbacks import monitor_callback
from keras.src.callbacks import tensorboard as tensorboard_module
from keras.src.saving import saving_lib
from keras.src.trainers import data_adapters
from keras.src.trainers.data_adapters import array_slicing
from keras.src.utils import tracking
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.distribute import multi_worker_util
from tensorflow.python.eager import context
from tensorflow.python.framework import ops as tf_ops

# The Keras releases whose internals these entries were checked against,
# as `setup.cfg` pins them (`keras>=3.15,<3.16`).
KERAS_VERSIONS = ("3.15",)


class OneReplicaSymbolicBuild(keras.Model):
    """A `keras.Model` whose symbolic build reads the first replica's part
    of the first batch, and whose state is built before the first trace
    on one device too.

    Two work-arounds for Keras 3.15 (no upstream issue found; checked on
    Keras 3.15.1), in the private hook `keras.Model._maybe_symbolic_build`
    that `fit`, `evaluate` and the `*_on_batch` methods call before the
    step is traced:

    - under a strategy, Keras builds the model, its optimizer and its
      compiled loss and metrics from the first batch's shapes, which it
      averages over replicas with `strategy.reduce`;
      `MultiWorkerMirroredStrategy` cannot do that on per-replica data
      ("Attempt to convert a value (PerReplica:{...}) ... to a Tensor").
      One replica's part has the same shapes.
    - without a strategy, Keras builds nothing and leaves the optimizer's
      variables (and those of compiled metrics and unbuilt layers) to the
      first trace of the step; `tf.function` traces a function that
      created variables a second time, which doubles the tracing of the
      step (about half of what a short `fit` costs beyond its epochs).
      Here they are built first, with the private
      `keras.Model._compile_metrics` and `keras.src.backend`'s
      `compute_output_spec` (what Keras's own symbolic build uses): the
      optimizer from the trainable variables, the rest from the first
      batch's shapes (not Keras's compiled loss, which the steps of a
      subclass may not call). Where the model cannot run symbolically,
      the trace builds them, as Keras leaves it.

    Subclasses give, in `_symbolic_build_batch`, the `(x, y,
    sample_weight)` that Keras should build from.
    """

    def _symbolic_build_batch(self, batch):
        """Keras's `(x, y, sample_weight)` of a batch of `fit`'s data."""
        return batch

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            self._build_before_trace(iterator, data_batch)
            return
        batch = first_replica_batch(
            self.distribute_strategy, iterator, data_batch
        )
        if batch is not None:
            batch = self._symbolic_build_batch(batch)
        super()._maybe_symbolic_build(data_batch=batch)

    def _build_before_trace(self, iterator, data_batch):
        """Builds, without a strategy, the variables the first trace of
        the step would otherwise create."""
        metrics = self._compile_metrics
        if not self.built or (metrics is not None and not metrics.built):
            batch = first_replica_batch(
                self.distribute_strategy, iterator, data_batch
            )
            if batch is None:
                return
            x, y, sample_weight = keras.tree.map_structure(
                _symbolic, self._symbolic_build_batch(batch)
            )
            try:
                y_pred = compute_output_spec(self, x, training=False)
                if metrics is not None and not metrics.built:
                    compute_output_spec(
                        self.compute_metrics,
                        x,
                        y,
                        y_pred,
                        sample_weight=sample_weight,
                    )
            except Exception:  # noqa: BLE001 - the trace builds them
                return
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)


def _symbolic(value):
    """A `KerasTensor` of `value`'s shape and dtype (`None` kept)."""
    if value is None:
        return None
    return keras.KerasTensor(
        value.shape, dtype=keras.backend.standardize_dtype(value.dtype)
    )


def made_in_strategy_scope(model):
    """Whether `model` was made inside a `tf.distribute` strategy's scope."""
    # Keras records that strategy in the private `_distribute_strategy`
    # only then (`distribute_strategy` falls back to the current one).
    # Checked on Keras 3.15.1.
    return model._distribute_strategy is not None


def compile_loss(model):
    """Keras's `CompileLoss` of a compiled `model` (`None` before)."""
    # `compile` builds it from `loss` and `loss_weights` and keeps it in
    # the private `_compile_loss`; `compute_loss` calls it with the whole
    # sample weights, where `SFTModel` needs it per output. Checked on
    # Keras 3.15.1.
    return model._compile_loss


def loss_tracker(model):
    """Keras's `Mean` tracker of the `loss` log of a compiled `model`."""
    # A custom `train_step` that logs `loss` updates this private tracker
    # (Keras's own `compute_loss` does) so that `loss` stays first in the
    # logs and in `model.metrics`. Checked on Keras 3.15.1.
    return model._loss_tracker


def in_multi_worker_mode(strategy):
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` over >1 worker."""
    # No public API tells one worker from several: the strategy's private
    # `extended._in_multi_worker_mode()` is what Keras's TF trainer reads.
    # Checked on Keras 3.15.1 and TensorFlow 2.21.0.
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
    """The first replica's part of the first batch of `iterator` (Keras's
    epoch iterator) or of `data_batch`, or `None` (see
    `OneReplicaSymbolicBuild`)."""
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
    # same scalar mean. Checked on Keras 3.15.1.
    if not in_multi_worker_mode(strategy):
        return logs
    return {key: ops.expand_dims(value, 0) for key, value in logs.items()}


def accumulate(tracker, mean, count):
    """Adds the scalar `mean` of `count` samples to a `keras.metrics.Mean`."""
    # The sums `Mean.update_state(mean, sample_weight=count)` makes, on the
    # metric's `total` and `count` variables (attributes of Keras's
    # `Reduce` metric, not documented API), without its broadcasting and
    # reductions: 16 graph ops fewer per tracker, which counts when a step
    # of a small model takes a few milliseconds. Checked on Keras 3.15.1.
    tracker.total.assign_add(ops.cast(mean, tracker.dtype) * count)
    tracker.count.assign_add(count)


def restore_compile(model, config):
    """`keras.Model.compile_from_config` for a model that overrides compile."""
    # Work-around for Keras 3.15 behaviour (no upstream issue found): on
    # load, Keras skips `compile_from_config` for models that override
    # `compile`, since their signature may differ. `SFTModel.compile` keeps
    # Keras's signature, so the saved compile arguments apply as they are.
    # Checked on Keras 3.15.1.
    model.compile(**keras.saving.deserialize_keras_object(config))
    if model.built:
        model.optimizer.build(model.trainable_variables)


# Keras's base class of its input adapters. `keras.Model.fit` takes an
# instance as `x` and uses it as it is (Keras 3.15's `get_data_adapter`
# lets custom adapters through), so `keras_sft._anchors` wraps Keras's own
# adapter of the user's data and keeps its epoch sizes and hooks. Checked on
# Keras 3.15.1.
DataAdapter = data_adapters.data_adapter.DataAdapter


def data_adapter(
    x, y, sample_weight, batch_size, steps_per_epoch, shuffle, class_weight
):
    """Keras's adapter of `fit`'s data, as `keras.Model.fit` builds it."""
    # No public API returns it; `fit` builds it in its epoch iterator from
    # these very arguments (arrays, datasets, generators, `PyDataset`).
    # Checked on Keras 3.15.1.
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
    # and its error for non-arrays are Keras's. Checked on Keras 3.15.1.
    return array_slicing.train_validation_split(
        arrays, validation_split=validation_split
    )


def apply_gradients(optimizer, gradients, trainable_weights):
    """Applies `gradients`, or warns as Keras does when nothing is trainable."""
    # Keras's own `train_step` (keras/src/backend/tensorflow/trainer.py)
    # skips the update with this warning for a model with no trainable
    # weights (`model.trainable = False`); `apply_gradients` of an empty
    # list fails ("not enough values to unpack"). Checked on Keras 3.15.1.
    if not trainable_weights:
        warnings.warn(
            "The model does not have any trainable weights.", stacklevel=2
        )
        return
    optimizer.apply_gradients(zip(gradients, trainable_weights, strict=True))


@contextlib.contextmanager
def fused_adam(optimizer, *, jit_compile):
    """Within, the Adam updates that `optimizer` traces run in one
    TensorFlow kernel per weight, `ResourceApplyAdam`.

    Keras 3's `Adam.update_step` makes eleven elementwise passes over each
    weight; without XLA TensorFlow runs each as its own kernel, and for a
    model whose weights are large next to its compute (dense layers on a
    small batch) the update is where a step's time goes: about a third of the
    MLP's step of `benchmarks/` on a CPU. `ResourceApplyAdam`, the kernel
    of `tf.keras`'s Adam before Keras 3, makes one.

    It applies where the update is Keras's own `Adam.update_step` (`Adam`,
    `AdamW`, and subclasses that keep it) without `amsgrad`, on one device
    (no strategy: there the update is the strategy's) and without XLA
    (which fuses Keras's update itself); for float32 weights with dense
    gradients whose writes no one watches (`before_writes`). Everything
    else the optimizer does (clipping, weight decay, gradient accumulation,
    loss scaling, its EMA and step counter) stays Keras's. The update is
    the same to float32 rounding: the kernel takes `1 - beta_1` and
    `1 - beta_2` in float32, Keras in float64 (`beta_2=0.999`: 1.3e-5
    relative).

    Args:
        optimizer: The model's optimizer (or a `LossScaleOptimizer`, whose
            inner optimizer is the one fused).
        jit_compile: Bool, whether the step is compiled with XLA.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    adam = keras.optimizers.Adam
    if (
        jit_compile
        or tf.distribute.has_strategy()
        or type(inner).update_step is not adam.update_step
        or inner.amsgrad
    ):
        yield
        return

    # The same for every weight, so made once, not once per weight as
    # Keras's update does: read before the update, as Keras reads them.
    step = tf.cast(inner.iterations + 1, tf.float32)
    beta_1 = tf.cast(inner.beta_1, tf.float32)
    beta_2 = tf.cast(inner.beta_2, tf.float32)
    constants = {
        "beta1_power": tf.pow(beta_1, step),
        "beta2_power": tf.pow(beta_2, step),
        "beta1": beta_1,
        "beta2": beta_2,
        "epsilon": tf.cast(inner.epsilon, tf.float32),
    }

    # An attribute of the instance while the step is traced: the update
    # that Keras's `apply` calls for each weight, below clipping, weight
    # decay and gradient accumulation; Keras 3.15 keeps a weight's moments
    # in `_momentums` and `_velocities` at `_get_variable_index` (as
    # `Adam.update_step` reads them). Checked on Keras 3.15.1.
    def update_step(gradient, variable, learning_rate):
        if (
            variable.dtype != tf.float32
            or isinstance(gradient, tf.IndexedSlices)
            or before_writes(variable) is not None
        ):
            return adam.update_step(inner, gradient, variable, learning_rate)
        index = inner._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=inner._momentums[index].value.handle,
            v=inner._velocities[index].value.handle,
            lr=tf.cast(learning_rate, tf.float32),
            grad=tf.cast(gradient, tf.float32),
            **constants,
        )

    inner.update_step = update_step
    try:
        yield
    finally:
        del inner.update_step


def trained_weights(model, optimizer):
    """The weights of `model` that a training step with `optimizer` trains.

    `model`'s trainable weights until `optimizer` is built, then those it
    was built for, whatever `trainable` is set to since: Keras takes a
    change of `trainable` into account at the next `compile`, and until
    then a plain model's step, traced once, trains what it was traced
    with (and an optimizer refuses any other variable).
    """
    # Keras 3.15's optimizers keep the variables they were built for in
    # `_trainable_variables` (a `LossScaleOptimizer` too), and refuse
    # others in `_check_variables_are_known`. Checked on Keras 3.15.1.
    if optimizer is None or not optimizer.built:
        return model.trainable_weights
    known = {id(v) for v in optimizer._trainable_variables}
    return [w for w in model.weights if id(w) in known]


def output_layer(model):
    """The layer that makes a Functional or Sequential model's single
    output (Keras records it only in the output tensor's private history;
    checked on Keras 3.15.1)."""
    if isinstance(model, keras.Sequential):
        return model.layers[-1]
    return model.outputs[0]._keras_history.operation


def own_weights(layer):
    """`layer`'s own weights (not its sublayers'): `(trainable, other)`."""
    # Keras 3.15 keeps them in these two tracker lists, in creation order,
    # which is the order `save_own_variables` of a generic layer writes.
    # Checked on Keras 3.15.1.
    return layer._trainable_variables, layer._non_trainable_variables


def replace_weight(layer, old, new):
    """Makes `layer` compute with the variable `new` wherever it used `old`.

    `new` takes `old`'s place in the layer's tracker list, so the layer's
    weight order (which saving relies on) stays as it was.
    """
    # No public API swaps a built layer's variable. Attribute assignment
    # outside `DotNotTrackScope` would append `new` to the tracker list.
    # Checked on Keras 3.15.1.
    with tracking.DotNotTrackScope():
        for name, value in list(vars(layer).items()):
            if value is old:
                setattr(layer, name, new)
    for weights in own_weights(layer):
        for index, weight in enumerate(weights):
            if weight is old:
                weights[index] = new
    # The tracker finds a variable it stored by id: where it kept `old`'s,
    # it must find `new`'s, so that Keras can untrack `new` (as `quantize`
    # does with the kernel it replaces) and never mistakes a later object
    # that reuses `old`'s id for one it holds. Checked on Keras 3.15.1.
    for ids in layer._tracker.stored_ids.values():
        if id(old) in ids:
            ids.discard(id(old))
            ids.add(id(new))


# What `tf.train.Checkpoint` saves and restores: an object that defines
# `_serialize_to_tensors` and `_restore_from_tensors`, as TensorFlow's
# variables do. TensorFlow has no public name for it. Checked on
# TensorFlow 2.21.0.
Trackable = tf.__internal__.tracking.Trackable


def set_checkpoint_stand_in(layer, variable, stand_in):
    """Makes `tf.train.Checkpoint` find the trackable `stand_in` where it
    finds `variable` among `layer`'s dependencies now, and keep finding it
    there; SavedModels still find `layer`'s own."""
    # TensorFlow asks each object for its dependencies, named after the
    # attributes that hold them (`_kernel`, `bias`), through
    # `_trackable_children`, which an attribute of the instance overrides
    # for this layer alone. Checked on TensorFlow 2.21.0, Keras 3.15.1.
    children = vars(layer).get("_trackable_children")
    if not isinstance(children, _CheckpointChildren):
        children = _CheckpointChildren(layer)
        vars(layer)["_trackable_children"] = children
    for name, child in type(layer)._trackable_children(layer).items():
        if child is variable:
            children.stand_ins.setdefault(name, stand_in)


def drop_checkpoint_stand_ins(layer):
    """Makes `tf.train.Checkpoint` find `layer`'s own dependencies again
    where `set_checkpoint_stand_in` gave it stand-ins: for a layer that
    shares no variable any more and whose variables changed places."""
    if isinstance(vars(layer).get("_trackable_children"), _CheckpointChildren):
        del vars(layer)["_trackable_children"]


class _CheckpointChildren:
    """A layer's own `_trackable_children`: Keras's, with stand-ins."""

    def __init__(self, layer):
        # Weakly: the layer must not keep itself alive through it.
        self._layer = weakref.ref(layer)
        self.stand_ins = {}

    def __call__(self, save_type="checkpoint", **kwargs):
        layer = self._layer()
        children = type(layer)._trackable_children(layer, save_type, **kwargs)
        if save_type == "checkpoint":
            children.update(self.stand_ins)
        return children

    def __deepcopy__(self, memo):
        # A deep copy of the layer, which shares nothing, lists its own
        # dependencies (not the original's).
        copy = memo.get(id(self._layer()))
        if copy is None:
            return self
        return functools.partial(type(copy)._trackable_children, copy)


def before_writes(variable):
    """The callable that `set_before_writes` gave `variable` (a Keras
    variable, or the `tf.Variable` behind one), or `None`."""
    targets = (
        [variable]
        if isinstance(variable, tf.Variable)
        else _tensorflow_variables(variable)
    )
    for target in targets:
        return getattr(vars(target).get("assign"), "before", None)
    return None


def set_before_writes(variable, before):
    """Makes each write to `variable` call `before(value)` first, or, with
    `before=None`, no longer.

    The writes are those to the TensorFlow variable behind it: Keras's
    (`assign`, `assign_add`, `assign_sub`, a layer's `set_weights` and
    `load_own_variables`, so `Model.set_weights` and `load_weights`),
    optimizers' (`assign`, `assign_add`, `assign_sub` and the `scatter_*`
    of sparse gradients, under a `tf.distribute` strategy on each
    replica's component) and `tf.train.Checkpoint`'s restore. `value` is
    the value the variable will hold; while a function is traced, a
    tensor of that function instead (a gradient, say), whose value is not
    known yet. The hooks run where the write is called, so in a traced
    function once, at trace time: not at each step.
    """
    # Every write reaches the `tf.Variable` (under a strategy, the
    # distributed variable and then each component) through one of these
    # methods, which an attribute of the instance overrides for this
    # variable alone; there is no public hook on a variable's writes. A
    # `copy.deepcopy` of either variable makes new TensorFlow variables,
    # without these attributes. Checked on Keras 3.15.1 with TensorFlow
    # 2.21.0.
    for target in _tensorflow_variables(variable):
        for name in _WRITES:
            if before is None:
                vars(target).pop(name, None)
            else:
                setattr(target, name, _BeforeWrites(target, name, before))


# Each write method of a `tf.Variable`, and how the value it writes is
# computed (eagerly) from the variable and the method's first argument.
_WRITES = {
    "assign": lambda variable, value: value,
    "assign_add": lambda variable, value: variable + value,
    "assign_sub": lambda variable, value: variable - value,
    "scatter_update": lambda variable, delta: tf.tensor_scatter_nd_update(
        variable, tf.expand_dims(delta.indices, -1), delta.values
    ),
    "scatter_add": lambda variable, delta: tf.tensor_scatter_nd_add(
        variable, tf.expand_dims(delta.indices, -1), delta.values
    ),
    "scatter_sub": lambda variable, delta: tf.tensor_scatter_nd_sub(
        variable, tf.expand_dims(delta.indices, -1), delta.values
    ),
    # `tf.train.Checkpoint` restores a variable (a Keras one through its
    # `tf.Variable`) with this, not with `assign`.
    "_restore_from_tensors": lambda variable, tensors: tensors[
        "VARIABLE_VALUE"
    ],
}


def _tensorflow_variables(variable):
    """The `tf.Variable` behind the Keras `variable`, and under a strategy
    each replica's component of it."""
    value = variable._value
    if value is None:
        return []
    if isinstance(value, tf.distribute.DistributedValues):
        return [value, *value.values]
    return [value]


class _BeforeWrites:
    """A `tf.Variable`'s own write method `name`: `before(value)`, then
    TensorFlow's."""

    def __init__(self, variable, name, before):
        # Weakly: the variable must not keep itself alive through its hook.
        self._variable = weakref.ref(variable)
        self._name = name
        self.before = before

    def __call__(self, *args, **kwargs):
        variable = self._variable()
        write = getattr(type(variable), self._name)
        # The value, delta or tensors written, positional or by the name
        # that each class of variable gives it (`assign(value=...)`).
        names = [name for name in _WRITTEN_ARGUMENTS if name in kwargs]
        if not args and not names:
            return write(variable, *args, **kwargs)
        argument = args[0] if args else kwargs[names[0]]
        if tf.inside_function():
            self.before(argument)
        else:
            self.before(_WRITES[self._name](variable, argument))
        return write(variable, *args, **kwargs)


# The names of the written argument in TensorFlow 2.21's variables.
_WRITTEN_ARGUMENTS = ("value", "delta", "sparse_delta", "restored_tensors")


def lora_adapters(layer):
    """The LoRA adapter variables of `layer` (`[]` where LoRA is off)."""
    # Keras 3.15's `enable_lora` (Dense, EinsumDense, Embedding, the
    # convolutions) adds weights named `lora_*_a` and `lora_*_b`. Checked
    # on Keras 3.15.1.
    if not getattr(layer, "lora_enabled", False):
        return []
    trainable, other = own_weights(layer)
    return [w for w in trainable + other if w.name.startswith("lora_")]


def disable_lora(layer):
    """Removes `layer`'s LoRA adapters: it computes with its base weights."""
    # Keras has no `disable_lora`. With `lora_rank=None` the layer's
    # config and saving are those of a layer that never had LoRA. Checked
    # on Keras 3.15.1.
    adapters = lora_adapters(layer)
    for name, value in list(vars(layer).items()):
        if any(value is adapter for adapter in adapters):
            # `Layer.__delattr__` also drops the variable from its tracker.
            delattr(layer, name)
    layer.lora_enabled = False
    layer.lora_rank = None
    layer.lora_alpha = None


@contextlib.contextmanager
def releasing_traced_graphs():
    """Lets the functions traced in the block be freed after it.

    TensorFlow 2.21 registers a gradient function for good at each
    `tf.custom_gradient` traced in graph mode, which every Keras optimizer
    step traces (`ReplicaContext.all_reduce`). Each holds its traced graph,
    and through the graph's captures the model's variables and optimizer
    state: a process that trains model after model keeps every one of
    them (TensorFlow issue 97697). On exit, the functions registered in
    the block are dropped. Each is read only where a gradient is traced
    through the op that registered it: use this around code whose
    gradients are taken in the block (a training step takes its own) or
    never.
    """
    # TensorFlow's private registry of gradient functions, by op type;
    # checked on TensorFlow 2.21.0.
    registry = tf_ops._gradient_registry._registry
    before = set(registry)
    try:
        yield
    finally:
        for name in set(registry) - before:
            if name.startswith("CustomGradient-"):
                del registry[name]


def in_saving_walk():
    """Whether the caller was called by Keras's walk of a model's saved
    state (`.keras` files and `.weights.h5`, saving and loading)."""
    # The walk reads each attribute `dir` lists, `layers` among them for a
    # subclassed model, and names the file's entries after it. Checked on
    # Keras 3.15.1 (`saving_lib._walk_saveable`, a generator).
    return sys._getframe(2).f_code is saving_lib._walk_saveable.__code__


def all_layers(layer, include_self=True):
    """`layer` and every layer nested in it, in Keras's own order."""
    # Keras lists nested layers with the private `_flatten_layers`; the
    # public `layers` stops at the first level. Checked on Keras 3.15.1.
    return list(layer._flatten_layers(include_self=include_self))


def build_by_run(model):
    """Builds the unbuilt layers of a built `model` whose class keeps
    `keras.Model`'s own `build`, by running its `call` on its recorded
    input shapes, as loading its `.keras` file does; returns whether
    `call` ran."""
    # `model.build(input_shape)` runs no `call` and builds no layer, but
    # loading the model's file builds them all (`Model.build_from_config`
    # runs `call` with the private `_build_by_run_for_single_pos_arg` or
    # `_build_by_run_for_kwargs`), so its copy would not take the model's
    # weights. The private methods, unlike `build_from_config`, say
    # whether they could (no upstream issue found). Checked on Keras
    # 3.15.1.
    config = model.get_build_config() or {}
    if "input_shape" in config:
        return model._build_by_run_for_single_pos_arg(config["input_shape"])
    if "shapes_dict" in config:
        return model._build_by_run_for_kwargs(config["shapes_dict"])
    return False


def functional_graph(model):
    """`(inputs, outputs, nodes_by_depth)` of a Functional model's graph (a
    Sequential model's inner one): the input and output structures, and
    the nodes by depth, consumers before producers. `None` for a
    subclassed model. Keras keeps all three in private attributes
    (checked on Keras 3.15.1)."""
    graph = getattr(model, "_functional", None) or model
    if not hasattr(graph, "_nodes_by_depth"):
        return None
    return graph._inputs_struct, graph._outputs_struct, graph._nodes_by_depth


def producing_node(tensor):
    """The graph node that made the symbolic `tensor`, and the tensor's
    index among its outputs (from the tensor's private history; checked on
    Keras 3.15.1)."""
    operation, node_index, tensor_index = tensor._keras_history
    return operation._inbound_nodes[node_index], tensor_index


def is_random_or_training_dependent(layer):
    """Whether `layer`'s own computation may differ between training and
    inference beyond `BatchNormalization`: it draws random numbers (Keras
    layers keep their seed generators privately), or it is another
    library's layer (not a nested Functional model) whose `call` takes
    `training` (a private attribute too; checked on Keras 3.15.1)."""
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


def set_monitor_modes(callbacks, directions):
    """Gives each of Keras's monitoring callbacks in `callbacks`
    (`EarlyStopping`, `ReduceLROnPlateau`, `ModelCheckpoint`, any
    subclass of their private base `MonitorCallback`) left in
    `mode="auto"` the direction of the log it watches, from `directions`
    (`"min"` or `"max"` by log name, without the `val_` prefix).

    Keras 3.15's `MonitorCallback._set_monitor_op` infers the direction
    of `mode="auto"` only for `loss` and for metrics compiled into the
    model (from their private `_direction`), when the first epoch ends,
    and raises for any other log (`task_loss`, a callback's log). Checked
    on Keras 3.15.1.
    """
    for callback in getattr(callbacks, "callbacks", callbacks) or ():
        if (
            isinstance(callback, monitor_callback.MonitorCallback)
            and callback.mode == "auto"
            and callback.monitor_op is None
        ):
            monitor = str(callback.monitor).removeprefix("val_")
            callback.mode = directions.get(monitor, "auto")


def with_graph_summaries(callbacks, student):
    """`callbacks` and, for each `keras.callbacks.TensorBoard` among them
    that writes graphs, one that writes `student`'s graph summary.

    Keras 3.15's `TensorBoard.set_model` writes the model's config as the
    `keras` summary of the train run only for a model of class
    `Functional` or `Sequential`; through a wrapper the student is trained
    but not drawn. The callback writes it with the same private function
    (`keras_model_summary`) into the callback's private `_train_writer`,
    for the students Keras would draw. Checked on Keras 3.15.1.
    """
    listed = list(getattr(callbacks, "callbacks", callbacks) or ())
    drawn = type(student).__name__ in ("Functional", "Sequential")
    summaries = [
        _StudentGraphSummary(callback, student)
        for callback in listed
        if drawn
        and isinstance(callback, keras.callbacks.TensorBoard)
        and callback.write_graph
    ]
    return callbacks if not summaries else [*listed, *summaries]


class _StudentGraphSummary(keras.callbacks.Callback):
    """Writes a student's graph summary where `tensorboard` writes its
    train run's, when training begins."""

    def __init__(self, tensorboard, student):
        super().__init__()
        self._tensorboard = tensorboard
        self._student = student

    def on_train_begin(self, logs=None):
        with self._tensorboard._train_writer.as_default():
            tensorboard_module.keras_model_summary(
                "keras", self._student, step=0
            )


def has_mask(tensor):
    """Whether the symbolic `tensor` carries a Keras mask."""
    # Keras attaches masks to tensors in the private `_keras_mask`; a
    # masked tensor cannot cross a model boundary without its mask.
    # Checked on Keras 3.15.1.
    return getattr(tensor, "_keras_mask", None) is not None


def evaluates_inside_fit(arguments):
    """Whether `keras.Model.evaluate`'s bound `arguments` are `fit`'s own
    validation call, which reuses the dataset `fit` prepared."""
    # `fit` passes the private argument `_use_cached_eval_dataset=True`.
    # Checked on Keras 3.15.1.
    return bool(arguments.get("_use_cached_eval_dataset"))


def dataset_op_types(dataset):
    """The op types of the graph that makes `dataset`, its functions' ops
    included (the ops `map`, `filter` or `flat_map` run)."""
    # No public API lists them; the private `_as_serialized_graph` gives
    # the `GraphDef` that `tf.data` itself serializes. Checked on
    # TensorFlow 2.21.0.
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(dataset._as_serialized_graph().numpy())
    op_types = {node.op for node in graph.node}
    for function in graph.library.function:
        op_types.update(node.op for node in function.node_def)
    return op_types


def strategy_supports_no_merge_call():
    """Whether the current strategy can apply gradients in the replica
    context, with no `merge_call` (all but the parameter-server ones)."""
    # The test `keras.optimizers.LossScaleOptimizer` makes, with the same
    # `tf.__internal__` function. Checked on Keras 3.15.1 and TensorFlow
    # 2.21.0.
    return tf.__internal__.distribute.strategy_supports_no_merge_call()


def bare_trackable():
    """An empty object that `tf.saved_model.save` tracks attributes of."""
    # `tf.Module` keeps `variables` to itself and `tf.train.Checkpoint`
    # adds a `save_counter`; the bare `AutoTrackable` that Keras's own
    # `ExportArchive` saves holds just what is set on it. Checked on
    # TensorFlow 2.21.0.
    return tf.__internal__.tracking.AutoTrackable()


# TensorFlow operations that `keras.ops` lacks, for the loss and the
# teacher's outputs, which otherwise use `keras.ops` alone: the number of
# replicas each loss term is divided by, and a variable whose number of
# rows changes between calls of a traced function, with reads and writes
# of some of its rows (the first epoch's buffers). Another backend's step
# driver would replace these.


def num_replicas():
    """The number of replicas of the strategy in scope (1 outside any)."""
    # What Keras's own losses divide by under the TensorFlow backend
    # (`keras/src/losses/loss.py`, `scale_loss_for_distribution`). Checked
    # on Keras 3.15.1 and TensorFlow 2.21.0.
    return tf.distribute.get_strategy().num_replicas_in_sync


def resizable_rows(shape, dtype):
    """A non-trainable variable of rows of `shape`, none yet, that
    `assign` resizes without invalidating traced functions that read it."""
    # A `keras.Variable` has a fixed shape. Checked on TensorFlow 2.21.0.
    return tf.Variable(
        tf.zeros((0, *shape), dtype),
        shape=tf.TensorShape([None, *shape]),
        trainable=False,
    )


def gather_rows(variable, index):
    """The rows `index` of a `resizable_rows` variable."""
    # Reads only those rows (`keras.ops.take` reads the whole variable
    # first). Checked on TensorFlow 2.21.0.
    return tf.gather(variable, index)


def scatter_rows(variable, index, values):
    """Writes `values` into the rows `index` of a `resizable_rows`
    variable, in place."""
    # `keras.ops.scatter_update` returns a new tensor: assigning it would
    # copy the whole variable at every step. Checked on TensorFlow 2.21.0.
    variable.scatter_update(tf.IndexedSlices(values, index))


class _WeightsBuffer(io.BytesIO):
    """An in-memory file that `keras.Model.save_weights` takes for a path
    (`str` gives the name it checks)."""

    def __init__(self, name):
        super().__init__()
        self._name = name

    def __str__(self):
        return self._name


def weights_in_memory(model, save_weights, name):
    """The `.weights.h5` file of `model` that `save_weights` (its
    `keras.Model.save_weights`) writes, made in an `io.BytesIO`, or `None`
    where memory may not hold it.

    HDF5 writing onto a disk that fills up midway fails with pages of
    errors, then a segmentation fault as h5py frees its objects (measured
    with h5py 3.14 on HDF5 1.14.6): made in memory, the file is then
    written by Python, whose `OSError` says the disk is full. Keras has no
    public file-object argument here, but `save_weights` passes its
    argument on to the private `saving_lib.H5IOStore`, which opens an
    `io.BytesIO` with h5py; `name` (ending with `.weights.h5`) passes
    Keras's check of the file name. Memory is judged by the private
    `saving_lib.is_memory_sufficient`, as Keras judges it before making a
    `.keras` file's weights in memory. No upstream issue found; checked on
    Keras 3.15.1.
    """
    if not saving_lib.is_memory_sufficient(model):
        return None
    buffer = _WeightsBuffer(os.fspath(name))
    save_weights(buffer)
    return buffer


@contextlib.contextmanager
def lambda_output_shapes(layers):
    """Gives each built `Lambda` layer among `layers` that has no
    `output_shape` its output's shape for the duration of the context.

    Keras saves a `Lambda` function as bytecode and, rebuilding a model
    from its config, calls it to infer the output's shape: without the
    globals of its module (`keras.ops`, a helper), that call fails before
    the copy can be given the original function. A saved `output_shape`
    spares the call; `Lambda` has no public setter for it (it keeps the
    argument in `_output_shape`). Checked on Keras 3.15.1.
    """
    given = []
    for layer in layers:
        if not isinstance(layer, keras.layers.Lambda):
            continue
        if layer._output_shape is not None:
            continue
        try:
            output = layer.output
        except (AttributeError, ValueError):
            # Called more than once, or never called in a graph.
            continue
        if keras.tree.is_nested(output):
            continue
        layer._output_shape = tuple(output.shape[1:])
        given.append(layer)
    try:
        yield
    finally:
        for layer in given:
            layer._output_shape = None
