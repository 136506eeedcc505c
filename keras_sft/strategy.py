"""Building a `tf.distribute` strategy from its name."""

import contextlib
import signal
import socket
import threading
import time

import tensorflow as tf

from keras_sft import _checks
from keras_sft import _keras_compat

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# Seconds between two looks for the peers that have not started yet.
_POLL_SECONDS = 0.5


def build_strategy(
    name="default", *, devices=None, tpu=None, collective_timeout=None
):
    """Returns the `tf.distribute.Strategy` that `name` stands for.

    Build the model, its teacher and its optimizer inside
    `strategy.scope()`, and batch the data with the global batch size: each
    replica then gets `global_batch_size / num_replicas_in_sync` samples.

    `"multi_worker"` reads the cluster from `TF_CONFIG`, as Keras and
    TensorFlow do, and makes every worker stop rather than wait for ever on
    a lost peer. A worker that dies or stops answering during training is
    found by TensorFlow's coordination service within about 10 seconds
    (its heartbeats), and every other worker's next step raises a
    `tf.errors.UnavailableError`. With `collective_timeout`, two more waits
    are bounded: the start, until every worker has joined (a worker that
    never starts), and each collective operation (a peer that is alive but
    stuck, for example writing to a storage that hangs); they raise a
    `RuntimeError` naming the missing workers and a
    `tf.errors.DeadlineExceededError` respectively. TensorFlow's cluster
    start also makes SIGTERM do nothing (it only records the signal, for
    `tf.distribute.experimental.PreemptionCheckpointHandler`); the SIGTERM
    handler that was set before is put back, so a cluster manager's
    SIGTERM ends a waiting worker (the default action ends the process),
    but for one that arrives during TensorFlow's own start: with
    `collective_timeout`, a short call once every worker has answered.

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
        collective_timeout: Float > 0, for `"multi_worker"`: the seconds a
            worker waits for the others to start, and for each collective
            operation to complete, before it stops; `None` keeps
            TensorFlow's waits (an hour at the start, no limit after).
            Longer than the longest pause of one worker that the others
            wait through: the chief's writes between steps (backups,
            checkpoints), and the start of the slowest worker. Defaults to
            `None`.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        RuntimeError: with `collective_timeout`, if the cluster does not
            form in time.
    """
    _checks.check_one_of("name", name, STRATEGIES)
    if collective_timeout is not None:
        if name != "multi_worker":
            raise _checks.argument_error(
                "collective_timeout",
                "None unless name='multi_worker'",
                received=f"collective_timeout={collective_timeout!r} with "
                f"name={name!r}",
            )
        _checks.check_float(
            "collective_timeout", collective_timeout, positive=True
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return _multi_worker(collective_timeout)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu or "local"
    )
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _multi_worker(timeout):
    """`MultiWorkerMirroredStrategy` of `TF_CONFIG`'s cluster, its waits
    bounded by `timeout` seconds (or TensorFlow's where `None`)."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    peers = _peers(resolver)
    if timeout is not None and peers:
        _wait_for_peers(resolver, peers, timeout)
        _keras_compat.bound_cluster_start(resolver, timeout)
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=timeout
    )
    with _sigterm_kept():
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(
                cluster_resolver=resolver, communication_options=options
            )
        except tf.errors.OpError as error:
            if timeout is None or not peers:
                raise
            reason = error.message.strip().splitlines()[0]
            raise RuntimeError(
                f"The cluster of TF_CONFIG did not form within "
                f"{timeout:g} s ({type(error).__name__}: {reason}); start "
                "every worker with the same cluster in TF_CONFIG, or relaunch "
                "the whole job"
            ) from None


def _peers(resolver):
    """`{"worker 1": "host:port", ...}`: the other tasks of the cluster
    that take part in its collectives (chief and workers)."""
    spec = resolver.cluster_spec()
    return {
        f"{job} {index}": spec.task_address(job, index)
        for job in ("chief", "worker")
        if job in spec.jobs
        for index in spec.task_indices(job)
        if (job, index) != (resolver.task_type, resolver.task_id)
    }


def _wait_for_peers(resolver, peers, timeout):
    """Waits until every task of `peers` accepts a connection at its
    address, at most `timeout` seconds.

    TensorFlow's own wait for the cluster runs inside one call that holds
    the interpreter, during which no Python signal handler runs and
    SIGTERM does nothing (`_sigterm_kept`). This wait sleeps in Python:
    SIGTERM and Ctrl-C end it. Meanwhile this task listens on its own
    port, so that its peers find it before TensorFlow's server takes the
    port over.
    """
    own = resolver.cluster_spec().task_address(
        resolver.task_type, resolver.task_id
    )
    try:
        listener = socket.create_server(("", _host_and_port(own)[1]))
    except OSError as error:
        raise RuntimeError(
            f"Cannot listen on {own}, this worker's address in TF_CONFIG "
            f"({error.strerror or error}); free the port or give the task "
            "another one"
        ) from None
    deadline = time.monotonic() + timeout
    with listener:
        while True:
            peers = {
                task: address
                for task, address in peers.items()
                if not _accepts(address)
            }
            if not peers:
                return
            if time.monotonic() >= deadline:
                missing = ", ".join(f"{t} at {a}" for t, a in peers.items())
                raise RuntimeError(
                    f"The cluster of TF_CONFIG did not form within "
                    f"{timeout:g} s: no answer from {missing}; start every "
                    "worker with the same cluster in TF_CONFIG, or relaunch "
                    "the whole job"
                )
            time.sleep(_POLL_SECONDS)


def _host_and_port(address):
    """`("host", port)` of `"host:port"` (or `"[v6 host]:port"`)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _accepts(address):
    """Whether `address` accepts a TCP connection now."""
    try:
        with socket.create_connection(_host_and_port(address), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _sigterm_kept():
    """Puts back, on leaving, the SIGTERM handler of before.

    TensorFlow's coordination service replaces SIGTERM's handler, in the
    call that starts the strategy, with one that only records the signal
    (for `tf.distribute.experimental.PreemptionCheckpointHandler`), so a
    SIGTERM would no longer end the process. One that arrives during that
    call is recorded and lost: after `_wait_for_peers`, the call is short.
    """
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            # Python sets signal handlers in the main thread only.
            signal.signal(
                signal.SIGTERM, signal.SIG_DFL if previous is None else previous
            )
