"""Training throughput and peak memory of SFT against its alternatives.

Times, on the same data and the same model:

1. `plain`: `model.fit` with cross-entropy only (the floor);
2. `distiller`: `keras.distillation.Distiller` with MSE on the outputs;
3. `sft_live`: `keras_sft.SFTModel` with the live teacher;
4. `sft_cached`: `keras_sft.SFTModel` on `keras_sft.cache_teacher_outputs`
   (with `--input=arrays`, at its defaults: one-epoch fits, the live step);
5. `l2_sp`: plain `model.fit` with L2-SP (`keras_sft.apply_l2_sp`), the
   weight-space alternative to SFT's consistency term;
6. `sft_unguarded`: `sft_live` with `guard_nonfinite=False`, to measure
   the cost of the non-finite step guard (on in every other SFT variant);
7. `sft_keras_adam`: `sft_live` with Keras's Adam update unfused, as the
   variants without `SFTModel` run it;
8. `torch_sft` and `torch_plain`, where PyTorch is installed: the textbook
   PyTorch loop of SFT with a frozen teacher copy, and the same loop
   without the teacher (`benchmarks/torch_loop.py`);

on the MLP 784-256-10 of the textbook example and on a small CNN (32x32x3)
(both built by `variants.py`; `--models=frozen_cnn` adds a CNN whose
frozen backbone holds almost every FLOP under a trainable head), batch
128, and prints samples per second (median over the timed epochs), each
ratio to `plain`, and each variant's peak memory; then, for the models
with a teacher, the bytes of the weights the teacher holds apart from the
student's, against those of the student's trainable weights, and the
step guard's speed, paired by round (`sft_live` over `sft_unguarded`).

Throughput: one process per model builds every variant, trains each one
untimed epoch (tracing, compilation), then times `--rounds` epochs of each,
taken in turns in a rotating order, so that load from other processes on
the machine falls on all variants alike. The PyTorch variants run in a
child process each (two runtimes in one process would share thread
pools), which trains one epoch per request, in the same turns. The cached
variant's one teacher pass (from a dataset) is timed apart (`cache_s`),
not in its epochs.

Peak memory: one process per variant trains it for two epochs; its peak
resident set size (`ru_maxrss` from `wait4`) measures that variant alone,
TensorFlow's runtime and the in-memory data included.

    python -m benchmarks.throughput
    python -m benchmarks.throughput --jit_compile=false --rounds=9
"""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks import variants  # noqa: E402

VARIANTS = (
    "plain",
    "distiller",
    "sft_live",
    "sft_cached",
    "l2_sp",
    "sft_unguarded",
    "sft_keras_adam",
)
TORCH_VARIANTS = ("torch_sft", "torch_plain")
MODELS = ("mlp", "cnn")
BATCH_SIZE = 128
# Steps per epoch: enough for a stable epoch time, few enough for a run of
# a few minutes on two cores.
STEPS = {"mlp": 200, "cnn": 24, "frozen_cnn": 24}

_MODELS = flags.DEFINE_list("models", list(MODELS), "Models to time.")
_VARIANTS = flags.DEFINE_list(
    "variants",
    list(VARIANTS)
    + (list(TORCH_VARIANTS) if importlib.util.find_spec("torch") else []),
    "Variants to time; the PyTorch ones by default where torch is installed.",
)
_ROUNDS = flags.DEFINE_integer(
    "rounds", 6, "Timed epochs per variant, taken in turns.", lower_bound=1
)
_JIT_COMPILE = flags.DEFINE_enum(
    "jit_compile",
    "default",
    ["default", "auto", "true", "false"],
    "`jit_compile` of every variant; `default` leaves each its own.",
)
_STEPS_PER_EXECUTION = flags.DEFINE_integer(
    "steps_per_execution",
    0,
    "`steps_per_execution` of every variant; 0 leaves each its own.",
    lower_bound=0,
)
_INPUT = flags.DEFINE_enum(
    "input",
    "dataset",
    ["dataset", "arrays"],
    "What the Keras variants' `fit` reads: a shuffled, batched, prefetched "
    "`tf.data.Dataset`, or the NumPy arrays (`fit(x, y, batch_size=128)`). "
    "With arrays, `sft_cached` is `SFTModel` at its defaults (its `fit` "
    "caches the teacher's outputs) and `sft_live` has `cache_teacher=False`.",
)
_RUN = flags.DEFINE_string(
    "run", None, "Internal: `MODEL:VARIANT,...:ROUNDS` to run in this process."
)


def _arrays(model_name):
    """Synthetic `(x, y)` NumPy arrays, one example per row."""
    return variants.arrays(model_name, STEPS[model_name] * BATCH_SIZE)


def _compile_kwargs():
    """The compile arguments the flags set; empty keeps each default."""
    kwargs = {}
    if _JIT_COMPILE.value != "default":
        kwargs["jit_compile"] = {"auto": "auto", "true": True, "false": False}[
            _JIT_COMPILE.value
        ]
    if _STEPS_PER_EXECUTION.value:
        kwargs["steps_per_execution"] = _STEPS_PER_EXECUTION.value
    return kwargs


def _compiled(model_name, variant):
    """The compiled Keras model of `variant`, built from seed 0.

    Every `sft_*` variant but `sft_cached` has `cache_teacher=False`;
    `sft_cached` is `SFTModel` at its defaults. With `--input=arrays` each
    timed epoch is a one-epoch `fit`, which does not cache (nothing to
    reuse): `sft_cached` then runs the live step, and `speed.py` times the
    cache.
    """
    import keras

    keras.utils.set_random_seed(0)
    return variants.compiled(
        variants.build(model_name),
        variant,
        cache_teacher=None if variant == "sft_cached" else False,
        **_compile_kwargs(),
    )


def _prepare(model_name, variant):
    """The model of `variant`, its `fit` data and the cache's time (or None).

    The data is a dict of `fit`'s keyword arguments.
    """
    import tensorflow as tf

    model = _compiled(model_name, variant)
    arrays = _arrays(model_name)
    cache_s = None
    if _INPUT.value == "arrays":
        x, y = arrays
        return model, {"x": x, "y": y, "batch_size": BATCH_SIZE}, cache_s
    examples, cache_s = variants.examples(model, variant, arrays)
    dataset = (
        examples.shuffle(STEPS[model_name] * BATCH_SIZE, seed=0)
        .batch(BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return model, {"x": dataset}, cache_s


def _weight_bytes(model):
    """`variants.weight_bytes(model)`, or None for a model without a
    teacher."""
    return variants.weight_bytes(model) if hasattr(model, "teacher") else None


def _torch_command(model_name, variant):
    """The command line of `torch_loop.py` for a PyTorch variant."""
    return [
        sys.executable,
        "-m",
        "benchmarks.torch_loop",
        f"--model={model_name}",
        f"--variant={variant.removeprefix('torch_')}",
    ]


class _TorchEpochs:
    """A `torch_loop.py --serve` child: one timed epoch per request."""

    def __init__(self, model_name, variant):
        self.child = subprocess.Popen(
            [*_torch_command(model_name, variant), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        # Built and one untimed epoch trained.
        if self.child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{model_name} {variant} failed to start")

    def epoch(self):
        self.child.stdin.write("epoch\n")
        self.child.stdin.flush()
        return float(self.child.stdout.readline())

    def close(self):
        self.child.stdin.close()
        self.child.wait()


def _run(model_name, variants, rounds):
    """Trains `variants` in turns, an epoch each; returns their timings."""
    import keras

    torch_epochs = {
        v: _TorchEpochs(model_name, v) for v in variants if v in TORCH_VARIANTS
    }
    prepared = {
        v: _prepare(model_name, v) for v in variants if v not in torch_epochs
    }
    times = {v: [] for v in variants}

    class _EpochTimer(keras.callbacks.Callback):
        def __init__(self, variant):
            super().__init__()
            self.variant = variant

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times[self.variant].append(time.perf_counter() - self.start)

    # The first epoch traces and compiles: not timed.
    for model, data, _ in prepared.values():
        model.fit(**data, epochs=1, verbose=0)
    order = list(variants)
    for _ in range(rounds):
        for variant in order:
            if variant in torch_epochs:
                times[variant].append(torch_epochs[variant].epoch())
                continue
            model, data, _ = prepared[variant]
            model.fit(
                **data, epochs=1, callbacks=[_EpochTimer(variant)], verbose=0
            )
        # Rotate so that no variant always follows the same one.
        order = order[1:] + order[:1]
    for child in torch_epochs.values():
        child.close()
    results = {
        variant: {"epoch_s": times[variant], "cache_s": None}
        | (
            {"jit_compile": "-", "steps_per_execution": "-"}
            if variant in torch_epochs
            else {
                "jit_compile": prepared[variant][0].jit_compile,
                "steps_per_execution": prepared[variant][0].steps_per_execution,
                "cache_s": prepared[variant][2],
                "weight_bytes": _weight_bytes(prepared[variant][0]),
            }
        )
        for variant in variants
    }
    return results


def _peak_rss(command):
    """Runs `command`; returns its stdout and its peak RSS in MiB."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE)
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{command} failed")
    # Linux reports ru_maxrss in KiB.
    return stdout.decode(), usage.ru_maxrss / 1024


def _spawn(model_name, variants, rounds):
    """Runs `_run` in a child; returns its results and peak RSS (MiB)."""
    stdout, peak_rss = _peak_rss(
        [
            sys.executable,
            "-m",
            "benchmarks.throughput",
            f"--run={model_name}:{','.join(variants)}:{rounds}",
            f"--jit_compile={_JIT_COMPILE.value}",
            f"--steps_per_execution={_STEPS_PER_EXECUTION.value}",
            f"--input={_INPUT.value}",
        ]
    )
    return json.loads(stdout.strip().splitlines()[-1]), peak_rss


def _variant_peak_rss(model_name, variant):
    """Peak RSS (MiB) of a process that trains `variant` alone."""
    if variant in TORCH_VARIANTS:
        # Its own process, without TensorFlow's runtime.
        return _peak_rss(_torch_command(model_name, variant))[1]
    return _spawn(model_name, [variant], 1)[1]


def _rows(model_name, timings, peak_rss):
    """Markdown rows for one model's variants."""
    samples = STEPS[model_name] * BATCH_SIZE
    speed = {
        v: samples / statistics.median(r["epoch_s"]) for v, r in timings.items()
    }
    rows = []
    for variant, result in timings.items():
        ratio = speed[variant] / speed["plain"] if "plain" in speed else 0.0
        cache = result["cache_s"]
        rows.append(
            f"| {model_name} | {variant} "
            f"| {result['jit_compile']} | {result['steps_per_execution']} "
            f"| {speed[variant]:,.0f} | {ratio:.2f} "
            f"| {peak_rss[variant]:,.0f} "
            f"| {'' if cache is None else f'{cache:.2f}'} |"
        )
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _RUN.value:
        model_name, variants, rounds = _RUN.value.split(":")
        results = _run(model_name, variants.split(","), int(rounds))
        print(json.dumps(results))
        return
    print(report.machine(), flush=True)
    print(
        "| model | variant | jit_compile | steps_per_execution | samples/s "
        "| vs plain | peak RSS MiB | cache_s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    # Printed after the table, which a line between rows would end.
    notes = []
    for model_name in _MODELS.value:
        timings, _ = _spawn(model_name, _VARIANTS.value, _ROUNDS.value)
        # Peak memory: one process per variant, one timed epoch.
        peak_rss = {
            v: _variant_peak_rss(model_name, v) for v in _VARIANTS.value
        }
        print("\n".join(_rows(model_name, timings, peak_rss)), flush=True)
        notes += [
            f"{model_name} {variant}: the teacher's own weights take "
            f"{result['weight_bytes'][0]:,} bytes, the student's trainable "
            f"weights {result['weight_bytes'][1]:,}"
            for variant, result in timings.items()
            if result.get("weight_bytes")
        ]
        if {"sft_live", "sft_unguarded"} <= timings.keys():
            notes.append(_guard_note(model_name, timings))
    print("\n".join(["", *notes]))


def _guard_note(model_name, timings):
    """The step guard's speed: `sft_live` against `sft_unguarded`, paired
    by round (`report.paired_ratio`)."""
    median, first, third = report.paired_ratio(
        timings["sft_live"]["epoch_s"], timings["sft_unguarded"]["epoch_s"]
    )
    return (
        f"{model_name} guard: sft_live runs at {median:.3f}x sft_unguarded's "
        f"speed, paired by round (quartiles {first:.3f} to {third:.3f})"
    )


if __name__ == "__main__":
    app.run(main)
