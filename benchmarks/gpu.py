"""Throughput and peak device memory on one accelerator, in one table.

Times, in one process and in turns, every variant of `variants.py` that an
accelerator's user chooses between:

1. `plain`: the student's `fit` (the floor);
2. `sft_live`: `keras_sft.SFTModel` with the live teacher
   (`cache_teacher=False`);
3. `sft_cached`: `keras_sft.SFTModel` on `keras_sft.cache_teacher_outputs`
   of the same arrays (the teacher's outputs computed once, `cache s`);
4. `distiller`: `keras.distillation.Distiller` weighted as SFT's objective;
5. `sft_bfloat16`: `sft_live` with the teacher in bfloat16
   (`teacher_dtype`);
6. with `--variants` only, `sft_int8`: `sft_live` with the teacher's
   `Dense` layers quantized to int8 (not under `mixed_float16`, which
   Keras's int8 refuses);

each with `jit_compile` false and true and with `steps_per_execution` 1
and 32, on the MLP 784-256-10 (batch 1024) and on `variants.resnet`, a
residual CNN on 32x32x3 (batch 256).

Every row reads the same in-memory batches (`DATA_BATCHES` of them,
cached and reshuffled each epoch, so that the input pipeline costs one
lookup a step) and trains an untimed warm-up (tracing, XLA compilation,
`warm-up s`) whose second epoch measures the step. Each row's epoch
length is then set so that `--repeats` rounds of every row fill the
model's share of `--budget_s`; the rounds run in a rotating order, so that
drift falls on all rows alike, until the repeats are done or the next
round would pass the share (`SHARES`: the residual CNN gets twice the
MLP's). The table gives the best epoch's examples per
second, its ratios to `plain` and to `distiller` under the same settings,
the device's peak memory during the row's epochs
(`tf.config.experimental.get_memory_info`, reset before each) and what
those epochs added to the memory the process held when they began (the
other rows' weights included in the first, not in the second).

    python -m benchmarks.gpu
    python -m benchmarks.gpu --mixed_precision=mixed_bfloat16
    python -m benchmarks.gpu --smoke          # tiny sizes, runs on CPU

The table and a JSON of the raw numbers go to `--output_dir`.
"""

import json
import math
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks import variants  # noqa: E402

VARIANTS = ("plain", "sft_live", "sft_cached", "distiller", "sft_bfloat16")
# Timed where `--variants` names them.
OPTIONAL_VARIANTS = ("sft_int8",)
MODELS = ("mlp", "resnet")
BATCH_SIZES = {"mlp": 1024, "resnet": 256}
# Weights of the models' shares of `--budget_s`: the residual CNN's XLA
# compilations take most of the warm-up.
SHARES = {"mlp": 1, "resnet": 2}
# Distinct batches per model: enough to vary the data, few enough that
# the cache of every row fits in host memory.
DATA_BATCHES = 32
SMOKE_BATCH_SIZE = 16
SMOKE_DATA_BATCHES = 2
SMOKE_RESNET_WIDTHS = (4, 8)
# The share of a model's time left after warm-up that the timed epochs
# aim to fill; the rest absorbs each `fit` call's own overhead.
_FILL = 0.7
_MIB = 2**20
_GROUP = ("model", "jit_compile", "steps_per_execution")
_COLUMNS = [
    ("model", "model", "{}"),
    ("variant", "variant", "{}"),
    ("jit_compile", "jit_compile", "{}"),
    ("steps_per_execution", "steps_per_execution", "{}"),
    ("batch", "batch_size", "{}"),
    ("examples/s", "examples_per_s", "{:,.0f}"),
    ("vs plain", "vs plain", "{:.2f}"),
    ("vs distiller", "vs distiller", "{:.2f}"),
    ("peak MiB", "peak_mib", "{:,.0f}"),
    ("epoch MiB", "epoch_mib", "{:,.0f}"),
    ("timed epochs", "timed_epochs", "{}"),
    ("warm-up s", "warmup_s", "{:.1f}"),
    ("cache s", "cache_s", "{:.2f}"),
]

_MODELS = flags.DEFINE_list("models", list(MODELS), "Models to time.")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), "Variants to time.")
_JIT_COMPILE = flags.DEFINE_list(
    "jit_compile", ["false", "true"], "`jit_compile` values to time."
)
_STEPS_PER_EXECUTION = flags.DEFINE_list(
    "steps_per_execution", ["1", "32"], "`steps_per_execution` values to time."
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    0,
    "Batch size of every model; 0 takes each model's own "
    f"({', '.join(f'{m} {b}' for m, b in BATCH_SIZES.items())}).",
    lower_bound=0,
)
_BUDGET_S = flags.DEFINE_float(
    "budget_s",
    300.0,
    "Seconds for the whole run, warm-up included, shared by the models "
    "(resnet twice the mlp). Each row runs at least one timed epoch, even "
    "past it.",
    lower_bound=0.0,
)
_REPEATS = flags.DEFINE_integer(
    "repeats",
    5,
    "Most timed epochs per row; the best is reported.",
    lower_bound=1,
)
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision",
    "none",
    ["none", "mixed_float16", "mixed_bfloat16"],
    "Keras dtype policy of every model (heads stay float32).",
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir",
    "/tmp/keras_sft_gpu_benchmark",
    "Where `gpu_benchmark.md` and `gpu_benchmark.json` are written.",
)
_SMOKE = flags.DEFINE_bool(
    "smoke",
    False,
    f"Tiny sizes (batch {SMOKE_BATCH_SIZE}, {SMOKE_DATA_BATCHES} batches, "
    f"resnet widths {SMOKE_RESNET_WIDTHS}), the shortest epochs and one "
    "timed epoch per row: checks that every row runs, on any device.",
)

flags.register_validator(
    "jit_compile",
    lambda values: set(values) <= {"true", "false"},
    "Invalid value for flag `jit_compile`. Expected a list of true/false.",
)
flags.register_validator(
    "steps_per_execution",
    lambda values: all(v.isdigit() and int(v) >= 1 for v in values),
    "Invalid value for flag `steps_per_execution`. Expected a list of "
    "integers >= 1.",
)
flags.register_validator(
    "models",
    lambda values: set(values) <= set(MODELS),
    f"Invalid value for flag `models`. Expected a list of {MODELS}.",
)
flags.register_validator(
    "variants",
    lambda values: set(values) <= set(VARIANTS + OPTIONAL_VARIANTS),
    "Invalid value for flag `variants`. Expected a list of "
    f"{VARIANTS + OPTIONAL_VARIANTS}.",
)
flags.register_multi_flags_validator(
    ["variants", "mixed_precision"],
    lambda values: (
        not (
            "sft_int8" in values["variants"]
            and values["mixed_precision"] == "mixed_float16"
        )
    ),
    "Invalid value for flag `variants`. Expected no `sft_int8` under "
    "`--mixed_precision=mixed_float16` (Keras's int8 quantization refuses "
    "float16 layers).",
)


def _has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _device_name():
    """The first GPU's name, or `CPU`."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    return details.get("device_name", gpus[0].name)


class _Row:
    """One variant under one setting: its model, its data, its times."""

    def __init__(
        self, model_name, variant, jit_compile, steps_per_execution, data
    ):
        import keras
        import tensorflow as tf

        self.model_name = model_name
        self.variant = variant
        self.jit_compile = jit_compile
        self.steps_per_execution = steps_per_execution
        start = time.perf_counter()
        keras.utils.set_random_seed(0)
        student = (
            variants.resnet(SMOKE_RESNET_WIDTHS)
            if _SMOKE.value and model_name == "resnet"
            else variants.build(model_name)
        )
        self.model = variants.compiled(
            student,
            variant,
            # `sft_cached` is fed the outputs: nothing left to cache.
            cache_teacher=False if variant.startswith("sft") else None,
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        examples, self.cache_s = variants.examples(self.model, variant, data)
        batches = len(data[1]) // _batch_size(model_name)
        self.dataset = (
            examples.batch(_batch_size(model_name), drop_remainder=True)
            .cache()
            .shuffle(batches, seed=0)
            .repeat()
            .prefetch(tf.data.AUTOTUNE)
        )
        self.setup_s = time.perf_counter() - start
        self.epoch_s = []
        self.peak_bytes = None
        self.epoch_bytes = None

    def fit(self, *, steps, epochs=1):
        """Trains `epochs` epochs of `steps`; returns each epoch's seconds."""
        import keras

        times = []

        class _Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            # Keras turns the logs into Python floats before this call,
            # which waits for the device: the epoch's work is done.
            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.start)

        self.model.fit(
            self.dataset,
            epochs=epochs,
            steps_per_epoch=steps,
            callbacks=[_Timer()],
            verbose=0,
        )
        return times

    def warm_up(self, steps):
        """Traces and compiles; sets `warmup_s` and `step_s`."""
        start = time.perf_counter()
        times = self.fit(steps=steps, epochs=2)
        self.warmup_s = self.setup_s + time.perf_counter() - start
        self.step_s = times[1] / steps

    def timed_epoch(self):
        """One timed epoch of `self.steps`, with the device's peak memory."""
        import tensorflow as tf

        held = None
        if _has_gpu():
            tf.config.experimental.reset_memory_stats("GPU:0")
            held = tf.config.experimental.get_memory_info("GPU:0")["current"]
        self.epoch_s.extend(self.fit(steps=self.steps))
        if held is not None:
            peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
            self.peak_bytes = max(self.peak_bytes or 0, peak)
            self.epoch_bytes = max(self.epoch_bytes or 0, peak - held)

    def result(self):
        """The row's raw numbers, JSON-ready."""
        batch_size = _batch_size(self.model_name)
        return {
            "model": self.model_name,
            "variant": self.variant,
            "jit_compile": self.jit_compile,
            "steps_per_execution": self.steps_per_execution,
            "batch_size": batch_size,
            "steps_per_epoch": self.steps,
            "epoch_s": self.epoch_s,
            "timed_epochs": len(self.epoch_s),
            "examples_per_s": self.steps * batch_size / min(self.epoch_s),
            "warmup_s": self.warmup_s,
            "cache_s": self.cache_s,
            "peak_bytes": self.peak_bytes,
            "epoch_bytes": self.epoch_bytes,
            "peak_mib": None
            if self.peak_bytes is None
            else self.peak_bytes / _MIB,
            "epoch_mib": None
            if self.epoch_bytes is None
            else self.epoch_bytes / _MIB,
        }


def _batch_size(model_name):
    if _SMOKE.value:
        return SMOKE_BATCH_SIZE
    return _BATCH_SIZE.value or BATCH_SIZES[model_name]


def _epoch_steps(step_s, epoch_s, multiple):
    """Steps of an epoch of about `epoch_s`: a multiple of `multiple`."""
    return multiple * max(1, round(epoch_s / step_s / multiple))


def _run_model(model_name, deadline):
    """Times every row of `model_name`, ending near `deadline`."""
    import keras

    keras.backend.clear_session()
    batches = SMOKE_DATA_BATCHES if _SMOKE.value else DATA_BATCHES
    data = variants.arrays(model_name, batches * _batch_size(model_name))
    executions = [int(v) for v in _STEPS_PER_EXECUTION.value]
    # Every epoch a whole number of executions of every setting.
    multiple = math.lcm(*executions)
    rows = []
    for jit_compile in [v == "true" for v in _JIT_COMPILE.value]:
        for steps_per_execution in executions:
            for variant in _VARIANTS.value:
                row = _Row(
                    model_name, variant, jit_compile, steps_per_execution, data
                )
                row.warm_up(multiple)
                logging.info(
                    "%s %s jit_compile=%s steps_per_execution=%d: warm-up "
                    "%.1f s, step %.2f ms",
                    model_name,
                    variant,
                    jit_compile,
                    steps_per_execution,
                    row.warmup_s,
                    row.step_s * 1e3,
                )
                rows.append(row)
    repeats = 1 if _SMOKE.value else _REPEATS.value
    left = max(0.0, deadline - time.perf_counter())
    # Smoke: the shortest epochs, whatever the budget.
    epoch_s = 0.0 if _SMOKE.value else left * _FILL / (repeats * len(rows))
    for row in rows:
        row.steps = _epoch_steps(row.step_s, epoch_s, multiple)
    order = list(rows)
    for repeat in range(repeats):
        start = time.perf_counter()
        for row in order:
            row.timed_epoch()
        round_s = time.perf_counter() - start
        logging.info("%s: round %d took %.1f s", model_name, repeat, round_s)
        if time.perf_counter() + round_s > deadline:
            break
        order = order[1:] + order[:1]
    return [row.result() for row in rows]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import keras
    import tensorflow as tf

    print(report.machine(), flush=True)
    start = time.perf_counter()
    if _MIXED_PRECISION.value != "none":
        keras.config.set_dtype_policy(_MIXED_PRECISION.value)
    results = []
    for index, model_name in enumerate(_MODELS.value):
        left = start + _BUDGET_S.value - time.perf_counter()
        ahead = sum(SHARES[m] for m in _MODELS.value[index:])
        share = left * SHARES[model_name] / ahead
        results.extend(_run_model(model_name, time.perf_counter() + share))
    rows = report.with_ratios(
        results,
        value="examples_per_s",
        group=_GROUP,
        references=("plain", "distiller"),
    )
    table = report.markdown(rows, _COLUMNS)
    output_dir = pathlib.Path(_OUTPUT_DIR.value)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "gpu_benchmark.md").write_text("\n".join(table) + "\n")
    summary = {
        "device": _device_name(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "mixed_precision": _MIXED_PRECISION.value,
        "smoke": _SMOKE.value,
        "budget_s": _BUDGET_S.value,
        "wall_s": time.perf_counter() - start,
        "rows": rows,
    }
    (output_dir / "gpu_benchmark.json").write_text(
        json.dumps(summary, indent=1) + "\n"
    )
    print(f"{summary['device']}, {summary['wall_s']:.0f} s")
    print("\n".join(table), flush=True)


if __name__ == "__main__":
    app.run(main)
