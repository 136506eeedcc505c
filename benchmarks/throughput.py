"""Training throughput and peak memory of SFT against its alternatives.

Times, on the same data and the same model, one process per run:

1. `plain`: `model.fit` with cross-entropy only (the floor);
2. `distiller`: `keras.distillation.Distiller` with MSE on the outputs;
3. `sft_live`: `keras_sft.SFTModel` with the live teacher;
4. `sft_cached`: `keras_sft.SFTModel` on `keras_sft.cache_teacher_outputs`;

on the MLP 784-256-10 of the textbook example and on a small CNN (32x32x3),
batch 128, and prints samples per second (median over the timed epochs of
every repeat), each ratio to `plain`, and the peak resident memory of the
run's process. Runs are interleaved (each repeat runs every variant, in a
rotated order) so that load from other processes spreads over all variants.

Each run is its own process: its peak resident set size (`ru_maxrss` from
`wait4`) then measures that variant alone, TensorFlow's runtime included.
The first epoch of each run (tracing, compilation) is not timed; the
cached variant's one teacher pass is timed separately (`cache_s`).

    python -m benchmarks.throughput
    python -m benchmarks.throughput --jit_compile=false --repeats=5
"""

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

VARIANTS = ("plain", "distiller", "sft_live", "sft_cached")
MODELS = ("mlp", "cnn")
BATCH_SIZE = 128
# Steps per epoch: enough for a stable epoch time, few enough for a run of
# a few minutes on two cores.
STEPS = {"mlp": 200, "cnn": 24}

_MODELS = flags.DEFINE_list("models", list(MODELS), "Models to time.")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), "Variants to time.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Processes per variant and model.", lower_bound=1
)
_EPOCHS = flags.DEFINE_integer(
    "epochs", 3, "Timed epochs per process.", lower_bound=1
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
_RUN = flags.DEFINE_string(
    "run", None, "Internal: `MODEL,VARIANT` to run in this process."
)


def _build(model_name, seed=0):
    """The pretrained classifier (random weights: speed does not care)."""
    import keras

    init = keras.initializers.GlorotUniform
    if model_name == "mlp":
        inputs = keras.Input((784,))
        hidden = keras.layers.Dense(256, "relu", kernel_initializer=init(seed))(
            inputs
        )
    else:
        inputs = keras.Input((32, 32, 3))
        hidden = inputs
        for i, filters in enumerate((32, 64)):
            hidden = keras.layers.Conv2D(
                filters, 3, activation="relu", kernel_initializer=init(seed + i)
            )(hidden)
            hidden = keras.layers.MaxPooling2D()(hidden)
        hidden = keras.layers.Flatten()(hidden)
        hidden = keras.layers.Dense(128, "relu", kernel_initializer=init(seed))(
            hidden
        )
    outputs = keras.layers.Dense(10, kernel_initializer=init(seed + 7))(hidden)
    return keras.Model(inputs, outputs, name=model_name)


def _examples(model_name):
    """A `tf.data.Dataset` of unbatched synthetic `(x, y)` examples."""
    import numpy as np
    import tensorflow as tf

    shape = (784,) if model_name == "mlp" else (32, 32, 3)
    count = STEPS[model_name] * BATCH_SIZE
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(count, *shape)).astype("float32")
    y = rng.integers(0, 10, size=count).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y))


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


def _run(model_name, variant):
    """Trains one variant; returns its epoch times and settings."""
    import keras
    import tensorflow as tf

    import keras_sft

    keras.utils.set_random_seed(0)
    student = _build(model_name)
    optimizer = keras.optimizers.Adam(1e-3)
    task_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    examples = _examples(model_name)
    cache_s = None
    if variant == "plain":
        model = student
        model.compile(optimizer=optimizer, loss=task_loss, **_compile_kwargs())
    elif variant == "distiller":
        model = keras.distillation.Distiller(
            teacher=keras_sft.clone_teacher(student),
            student=student,
            distillation_losses=keras.distillation.FeatureDistillation(
                loss="mse"
            ),
        )
        model.compile(optimizer=optimizer, loss=task_loss, **_compile_kwargs())
    else:
        model = keras_sft.SFTModel(student, lambda_=0.5)
        model.compile(optimizer=optimizer, **_compile_kwargs())
        if variant == "sft_cached":
            start = time.perf_counter()
            examples = keras_sft.cache_teacher_outputs(model.teacher, examples)
            cache_s = time.perf_counter() - start
    dataset = (
        examples.shuffle(STEPS[model_name] * BATCH_SIZE, seed=0)
        .batch(BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )
    times = []

    class _EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(
        dataset, epochs=1 + _EPOCHS.value, callbacks=[_EpochTimer()], verbose=0
    )
    return {
        "epoch_s": times[1:],
        "cache_s": cache_s,
        "jit_compile": model.jit_compile,
        "steps_per_execution": model.steps_per_execution,
    }


def _spawn(model_name, variant, argv):
    """Runs one variant in a child; returns its result and peak RSS (MiB)."""
    flags_to_pass = [a for a in argv[1:] if not a.startswith("--run")]
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.throughput",
            f"--run={model_name},{variant}",
            *flags_to_pass,
        ],
        stdout=subprocess.PIPE,
    )
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"{model_name} {variant} failed")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    # Linux reports ru_maxrss in KiB.
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def _table(model_name, results):
    """Markdown rows for one model's variants."""
    rows = []
    samples = STEPS[model_name] * BATCH_SIZE
    speed = {
        variant: samples / statistics.median(r["epoch_s"])
        for variant, r in results.items()
    }
    rss = {v: statistics.median(r["peak_rss_mib"]) for v, r in results.items()}
    for variant, r in results.items():
        cache = f"{statistics.median(r['cache_s']):.2f}" if r["cache_s"] else ""
        ratio = speed[variant] / speed["plain"] if "plain" in speed else 0
        rows.append(
            f"| {model_name} | {variant} | {r['settings']} "
            f"| {speed[variant]:,.0f} | {ratio:.2f} "
            f"| {rss[variant]:,.0f} | {cache} |"
        )
    return rows


def main(argv):
    if _RUN.value:
        model_name, variant = _RUN.value.split(",")
        print(json.dumps(_run(model_name, variant)))
        return
    results = {
        m: {
            v: {"epoch_s": [], "peak_rss_mib": [], "cache_s": []}
            for v in _VARIANTS.value
        }
        for m in _MODELS.value
    }
    order = list(_VARIANTS.value)
    for _ in range(_REPEATS.value):
        for model_name in _MODELS.value:
            for variant in order:
                result = _spawn(model_name, variant, argv)
                entry = results[model_name][variant]
                entry["epoch_s"] += result["epoch_s"]
                entry["peak_rss_mib"].append(result["peak_rss_mib"])
                if result["cache_s"] is not None:
                    entry["cache_s"].append(result["cache_s"])
                entry["settings"] = (
                    f"jit={result['jit_compile']}, "
                    f"spe={result['steps_per_execution']}"
                )
        order = order[1:] + order[:1]
    print(
        "| model | variant | settings | samples/s | vs plain "
        "| peak RSS MiB | cache_s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model_name in _MODELS.value:
        print("\n".join(_table(model_name, results[model_name])))


if __name__ == "__main__":
    app.run(main)
