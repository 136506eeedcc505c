"""Running the workers of a multi-worker job on one machine.

Each worker is a process of the same command, with `TF_CONFIG` naming the
cluster (free ports on 127.0.0.1) and its own task, as a cluster manager
would set it on each machine. For trying a job out; on a cluster, see
docs/cluster.md.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import logging

# Seconds a worker gets to end after SIGTERM before it is killed.
STOP_SECONDS = 30
# Seconds between two looks at the workers.
_POLL_SECONDS = 0.1


def free_ports(count):
    """`count` distinct TCP ports free on 127.0.0.1 at the time of asking."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(addresses, index):
    """The `TF_CONFIG` of worker `index` of a cluster of workers at
    `addresses` (`"host:port"` strings), worker 0 being the chief."""
    return json.dumps(
        {
            "cluster": {"worker": list(addresses)},
            "task": {"type": "worker", "index": index},
        }
    )


def binary_command(binary, flag_arguments):
    """`python -m examples.BINARY --strategy=multi_worker FLAGS...`.

    Raises:
        ValueError: if `flag_arguments` set another `--strategy`.
    """
    for position, argument in enumerate(flag_arguments):
        name, _, value = argument.partition("=")
        if name != "--strategy":
            continue
        if not value and position + 1 < len(flag_arguments):
            value = flag_arguments[position + 1]
        if value != "multi_worker":
            raise ValueError(
                f"The workers run with --strategy=multi_worker. Received: "
                f"--strategy={value}; leave --strategy out"
            )
    return [
        sys.executable,
        "-m",
        f"examples.{binary}",
        "--strategy=multi_worker",
        *flag_arguments,
    ]


def start_workers(command, count, **popen_arguments):
    """Starts `count` processes of `command`, each with the `TF_CONFIG` of
    its task in a cluster on free ports of 127.0.0.1.

    Args:
        command: List of strings, the command every worker runs.
        count: Int > 0, the number of workers.
        **popen_arguments: Passed to each `subprocess.Popen` (`stdout`,
            `stderr`, `cwd`, ...); `env`, if given, is the base of each
            worker's environment. The package of `examples` is put on
            `PYTHONPATH`, so that `python -m examples.NAME` runs anywhere.

    Returns:
        List of the `subprocess.Popen`s, worker 0 (the chief) first.
    """
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)]
    base = dict(popen_arguments.pop("env", None) or os.environ)
    # The folder that holds the `examples` package, two levels up.
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    path = base.get("PYTHONPATH")
    base["PYTHONPATH"] = root if not path else f"{root}{os.pathsep}{path}"
    processes = []
    try:
        for index in range(count):
            env = {**base, "TF_CONFIG": tf_config(addresses, index)}
            processes.append(
                subprocess.Popen(command, env=env, **popen_arguments)
            )
    except BaseException:
        stop(processes)
        raise
    return processes


def stop(processes, *, seconds=STOP_SECONDS):
    """Sends SIGTERM to the processes still running, and SIGKILL to those
    still running `seconds` later; returns once all have ended."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(command, count, *, stdout=None, stderr=None):
    """Runs `count` workers of `command` to their end, as one job.

    Their output comes out line by line, each line prefixed with its worker
    (`[worker 1] ...`), stdout to `stdout` and stderr to `stderr`. A worker
    that fails ends the job: the others are stopped (`stop`), as a cluster
    manager stops a job to relaunch it. SIGINT and SIGTERM stop the workers
    the same way (each worker runs in a session of its own, so that a
    terminal's Ctrl-C reaches the launcher alone).

    Args:
        command: List of strings, the command every worker runs.
        count: Int > 0, the number of workers.
        stdout: Text file for the workers' stdout. Defaults to
            `sys.stdout`.
        stderr: Text file for the workers' stderr. Defaults to
            `sys.stderr`.

    Returns:
        Int, the job's exit status: 0 if every worker succeeded, else the
        status of the first to fail (128 + N for a worker ended by signal
        N), or 128 + N when the launcher got signal N.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    received = []
    handlers = {
        signum: signal.signal(
            signum, lambda number, frame: received.append(number)
        )
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        processes = start_workers(
            command,
            count,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        pumps = [
            _pump(pipe, target, f"[worker {index}] ")
            for index, process in enumerate(processes)
            for pipe, target in (
                (process.stdout, stdout),
                (process.stderr, stderr),
            )
        ]
        try:
            status = _wait(processes, received)
        finally:
            stop(processes)
            for pump in pumps:
                pump.join()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return status


def _wait(processes, received):
    """Waits until every worker succeeded, one failed, or the launcher got
    a signal (appended to `received`); returns the job's status."""
    while True:
        if received:
            logging.warning("Got signal %d; stopping the workers", received[0])
            return 128 + received[0]
        codes = [process.poll() for process in processes]
        for index, code in enumerate(codes):
            if code:
                logging.error(
                    "Worker %d exited with status %d; stopping the others",
                    index,
                    code,
                )
                return code if code > 0 else 128 - code
        if all(code == 0 for code in codes):
            return 0
        time.sleep(_POLL_SECONDS)


def _pump(pipe, target, prefix):
    """Starts a thread that copies the lines of `pipe` (bytes) to the text
    file `target`, each after `prefix`."""

    def copy():
        with pipe:
            for line in pipe:
                text = line.decode("utf-8", errors="replace")
                target.write(f"{prefix}{text.rstrip(chr(10))}\n")
                target.flush()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread
