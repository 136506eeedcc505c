import json
import os
import signal
import socket
import time

import pytest
import tensorflow as tf

from examples.lib import local_cluster
from keras_sft import strategy


def test_default_is_the_current_strategy():
    assert strategy.build_strategy("default") is tf.distribute.get_strategy()


def test_mirrored_over_given_devices():
    mirrored = strategy.build_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 2


def test_unknown_name_is_refused():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `name`. Expected one of "
        r"\('default', 'mirrored', 'multi_worker', 'tpu'\). "
        r"Received: name='gpu'",
    ):
        strategy.build_strategy("gpu")


@pytest.mark.parametrize(
    "name, timeout, received",
    [
        ("mirrored", 60.0, "collective_timeout=60.0 with name='mirrored'"),
        ("default", 1.0, "collective_timeout=1.0 with name='default'"),
    ],
)
def test_collective_timeout_needs_multi_worker(name, timeout, received):
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `collective_timeout`. Expected "
        rf"None unless name='multi_worker'. Received: {received}$",
    ):
        strategy.build_strategy(name, collective_timeout=timeout)


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), "60"])
def test_collective_timeout_must_be_positive(timeout):
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `collective_timeout`. Expected a "
        rf"float > 0. Received: collective_timeout={timeout!r}",
    ):
        strategy.build_strategy("multi_worker", collective_timeout=timeout)


def _resolver(monkeypatch, workers, index, chief=None):
    cluster = {"worker": workers, **({"chief": [chief]} if chief else {})}
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        ),
    )
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def test_peers_are_the_other_tasks(monkeypatch):
    resolver = _resolver(monkeypatch, ["h1:1", "h2:2", "h3:3"], 1, chief="h0:9")
    assert strategy._peers(resolver) == {
        "chief 0": "h0:9",
        "worker 0": "h1:1",
        "worker 2": "h3:3",
    }


def test_host_and_port():
    assert strategy._host_and_port("10.0.0.1:2222") == ("10.0.0.1", 2222)
    assert strategy._host_and_port("[::1]:2222") == ("::1", 2222)


def test_wait_for_peers_names_the_missing_ones(monkeypatch):
    own, missing = (f"127.0.0.1:{port}" for port in local_cluster.free_ports(2))
    resolver = _resolver(monkeypatch, [own, missing], 0)
    start = time.monotonic()
    with pytest.raises(
        RuntimeError,
        match=r"^The cluster of TF_CONFIG did not form within 1 s: no answer "
        rf"from worker 1 at {missing}; start every worker with the same "
        r"cluster in TF_CONFIG, or relaunch the whole job$",
    ):
        strategy._wait_for_peers(resolver, strategy._peers(resolver), 1.0)
    assert time.monotonic() - start < 10


def test_wait_for_peers_returns_once_they_listen(monkeypatch):
    own, peer = (f"127.0.0.1:{port}" for port in local_cluster.free_ports(2))
    resolver = _resolver(monkeypatch, [own, peer], 0)
    with socket.create_server(("127.0.0.1", int(peer.split(":")[1]))):
        strategy._wait_for_peers(resolver, strategy._peers(resolver), 30.0)
    # Its own port is free again, for TensorFlow's server.
    socket.create_server(("", int(own.split(":")[1]))).close()


def test_wait_for_peers_refuses_a_port_in_use(monkeypatch):
    own, peer = (f"127.0.0.1:{port}" for port in local_cluster.free_ports(2))
    resolver = _resolver(monkeypatch, [own, peer], 0)
    with (
        socket.create_server(("", int(own.split(":")[1]))),
        pytest.raises(
            RuntimeError,
            match=rf"^Cannot listen on {own}, this worker's address in "
            r"TF_CONFIG \(.+\); free the port or give the task another one$",
        ),
    ):
        strategy._wait_for_peers(resolver, strategy._peers(resolver), 1.0)


def test_sigterm_handler_of_before_the_start_is_put_back():
    received = []
    previous = signal.signal(
        signal.SIGTERM, lambda number, frame: received.append(number)
    )
    try:
        with strategy._sigterm_kept():
            # What TensorFlow's start does: a handler of its own.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            if received:
                break
            time.sleep(0.01)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
