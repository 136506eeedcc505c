"""The measurements that decide `SFTModel`'s speed defaults, in one run.

On `fit` of NumPy arrays (`fit(x, y, batch_size=128)`), the MLP
784-256-10 and the small CNN of `variants.py`, Adam, and
`SFTModel(lambda_=0.5, distance="mse")`:

1. Steps: each variant trains one epoch per turn, the variants in turns
   in a rotating order (so that load from other processes falls on all
   alike), after an untimed warm-up; each epoch's wall time and the
   process's CPU time (all threads) are taken. Variants: `plain` and
   `distiller` (`variants.py`); `sft_live` (`cache_teacher=False`, the
   step guard on); `sft_unguarded` (`guard_nonfinite=False`);
   `sft_keras_adam` (`sft_live` with Keras's Adam update unfused, as
   plain `fit` and the Distiller run it);
   `sft_cached` (the defaults: the timed epoch is the last of a
   three-epoch `fit`, which reads the teacher's outputs that the first
   stored); `sft_bfloat16`, `sft_float16` and `sft_int8` (`sft_live`
   with that `teacher_dtype`). The speed ratios compare each variant's fastest
   epoch, the one least disturbed by other processes; the paired ones
   take each round's `sft_live` time over the variant's, median over
   rounds, in wall and in CPU time.
2. Fit calls: what a call costs beyond its epochs, on short fits (two
   epochs of two steps: a fresh model's first call, tracing included,
   then the same model's second call), for those variants and
   `sft_unguarded` (two epochs are too few to cache: `sft_cached` runs
   `sft_live`'s code there); and a fresh model's whole `fit(x, y, epochs=E)`,
   tracing and every epoch included, for each `E` of `--epochs`:
   `plain`, `distiller`, `sft_live` (the cache off) and `sft_cached` (the
   defaults), in turns, median over `--fit_rounds`.
3. Teacher precision: the bytes of the weights the teacher holds apart
   from the student (full fine-tuning: a whole copy), the largest change
   of the teacher's outputs and of the term against the float32 teacher
   (each batch of the arrays, the student trained by part 1), and the
   test accuracy that fine-tuning reaches with each precision on
   scikit-learn's digits (an MLP pretrained on the digits, fine-tuned on
   the same digits inverted with `lambda_=0.1`: accuracy on the inverted
   test digits, the new task, and on the plain ones, the old task), over
   `--seeds` seeds.

Last, one line per default with the figures it rests on: the guard's
paired cost in CPU time, which varies less than the wall time, and the
whole fits' ratios in wall and CPU time, against the noise that the fits
of fewer than three epochs (the same code at the defaults and with the
cache off) show. The first line
names the machine, read from it (`report.machine`).

    python -m benchmarks.speed
    python -m benchmarks.speed --models=mlp --rounds=3 --epochs=1,5
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks import variants  # noqa: E402

MODELS = ("mlp", "cnn")
PRECISIONS = ("float32", "bfloat16", "float16", "int8")
# `sft_live` with each teacher precision but float32 last.
STEP_VARIANTS = (
    "plain",
    "distiller",
    "sft_live",
    "sft_unguarded",
    "sft_keras_adam",
    "sft_cached",
    *(f"sft_{precision}" for precision in PRECISIONS[1:]),
)
FIT_VARIANTS = ("plain", "distiller", "sft_live", "sft_cached")
SHORT_VARIANTS = (*FIT_VARIANTS, "sft_unguarded")
# Steps of an epoch of the short fits, which two epochs make.
SHORT_STEPS = 2
BATCH_SIZE = 128
# Steps of a timed epoch, and examples of the whole fits (as
# `throughput.py` and `whole_fit.py`).
STEPS = {"mlp": 100, "cnn": 24}
FIT_EXAMPLES = {"mlp": 200 * BATCH_SIZE, "cnn": 24 * BATCH_SIZE}
# The step guard's budget: the largest share of a step it may cost.
GUARD_BUDGET = 0.02
# The digits fine-tuning's `lambda_`: where it trades the new task
# (about 0.6 test accuracy after its 10 epochs) against the old (about
# 0.85), so that the teacher shapes what is learned.
DIGITS_LAMBDA = 0.1
# Whole fits that run the same code (too few epochs to cache) differ by at
# least this much on two cores (more in wall than in CPU time), more
# where that run's such fits differ more: a smaller gap decides nothing.
NOISE = 0.03
# The fewest epochs of a `fit` on arrays that `SFTModel` caches the
# teacher's outputs for, on one device (`cache_teacher`; keep in step
# with `keras_sft._teacher_outputs._epochs_that_pay`).
CACHED_EPOCHS = 3
_STEP_COLUMNS = [
    ("model", "model", "{}"),
    ("variant", "variant", "{}"),
    ("fastest ms/step", "fastest_ms", "{:.2f}"),
    ("median ms/step", "step_ms", "{:.2f}"),
    ("median CPU ms/step", "cpu_ms", "{:.2f}"),
    ("vs plain", "vs plain", "{:.3f}"),
    ("vs distiller", "vs distiller", "{:.3f}"),
    ("vs sft_live", "vs sft_live", "{:.3f}"),
    ("paired vs sft_live", "paired vs sft_live", "{:.3f}"),
    ("CPU paired vs sft_live", "cpu paired vs sft_live", "{:.3f}"),
]
_FIT_COLUMNS = [
    ("model", "model", "{}"),
    ("epochs", "epochs", "{}"),
    ("variant", "variant", "{}"),
    ("fit s", "fit_s", "{:.2f}"),
    ("CPU s", "cpu_s", "{:.2f}"),
    ("vs plain", "vs plain", "{:.3f}"),
    ("vs distiller", "vs distiller", "{:.3f}"),
    ("vs sft_live", "vs sft_live", "{:.3f}"),
]
_SHORT_COLUMNS = [
    ("model", "model", "{}"),
    ("variant", "variant", "{}"),
    ("first call s", "first_s", "{:.3f}"),
    ("first call CPU s", "first_cpu_s", "{:.3f}"),
    ("repeated call s", "repeated_s", "{:.3f}"),
    ("repeated call CPU s", "repeated_cpu_s", "{:.3f}"),
]
_PRECISION_COLUMNS = [
    ("model", "model", "{}"),
    ("teacher", "precision", "{}"),
    ("teacher-owned weights, bytes", "weight_bytes", "{:,}"),
    ("largest output change", "output_change", "{:.2e}"),
    ("largest term change", "term_change", "{:.2e}"),
]
_ACCURACY_COLUMNS = [
    ("teacher", "precision", "{}"),
    ("new task, mean", "new", "{:.4f}"),
    ("new, seeds' spread", "new_spread", "{:.4f}"),
    ("old task, mean", "old", "{:.4f}"),
    ("old, seeds' spread", "old_spread", "{:.4f}"),
    ("largest change vs float32, new", "new_change", "{:.4f}"),
    ("largest change vs float32, old", "old_change", "{:.4f}"),
]

_MODELS = flags.DEFINE_list("models", list(MODELS), "Models to time.")
_ROUNDS = flags.DEFINE_integer(
    "rounds",
    12,
    "Timed epochs per step variant, taken in turns.",
    lower_bound=1,
)
_EPOCHS = flags.DEFINE_list(
    "epochs", ["1", "2", "5", "20"], "Epochs of the timed whole fits."
)
_FIT_ROUNDS = flags.DEFINE_integer(
    "fit_rounds", 3, "Whole fits per variant and epochs.", lower_bound=1
)
_SEEDS = flags.DEFINE_integer(
    "seeds", 5, "Seeds of the digits fine-tuning, per precision.", lower_bound=1
)
flags.register_validator(
    "epochs",
    lambda values: all(v.isdigit() and int(v) >= 1 for v in values),
    "Invalid value for flag `epochs`. Expected a list of integers >= 1.",
)
flags.register_validator(
    "models",
    lambda values: set(values) <= set(MODELS),
    f"Invalid value for flag `models`. Expected a list of {MODELS}.",
)


def _compiled(model_name, variant):
    """`variant` of the model, built from seed 0; `sft_cached` at
    `SFTModel`'s defaults, every other `sft_*` variant with the cache off."""
    import keras

    keras.utils.set_random_seed(0)
    return variants.compiled(
        variants.build(model_name),
        variant,
        cache_teacher=None if variant == "sft_cached" else False,
    )


class _EpochTimer:
    """A Keras callback factory that keeps the last epoch's wall and CPU
    seconds (no per-batch hook: Keras keeps dispatching asynchronously)."""

    def __init__(self):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                timer.start = (time.perf_counter(), time.process_time())

            def on_epoch_end(self, epoch, logs=None):
                timer.last = (
                    time.perf_counter() - timer.start[0],
                    time.process_time() - timer.start[1],
                )

        self.callback = Callback()


def _steps(model_name):
    """Rows of part 1 for `model_name`, and its trained `sft_live` model."""
    x, y = variants.arrays(model_name, STEPS[model_name] * BATCH_SIZE)
    models = {v: _compiled(model_name, v) for v in STEP_VARIANTS}
    timer = _EpochTimer()

    def epoch(variant):
        # The cache lives for one `fit`: its later epochs read it.
        epochs = CACHED_EPOCHS if variant == "sft_cached" else 1
        models[variant].fit(
            x,
            y,
            batch_size=BATCH_SIZE,
            epochs=epochs,
            verbose=0,
            callbacks=[timer.callback],
        )
        return timer.last

    for variant in STEP_VARIANTS:
        epoch(variant)
    times = {v: [] for v in STEP_VARIANTS}
    order = list(STEP_VARIANTS)
    for _ in range(_ROUNDS.value):
        for variant in order:
            times[variant].append(epoch(variant))
        order = order[1:] + order[:1]
    rows = []
    for variant, pairs in times.items():
        wall = [w for w, _ in pairs]
        cpu = [c for _, c in pairs]
        steps = STEPS[model_name]
        row = {
            "model": model_name,
            "variant": variant,
            "fastest_ms": min(wall) / steps * 1e3,
            "step_ms": statistics.median(wall) / steps * 1e3,
            "cpu_ms": statistics.median(cpu) / steps * 1e3,
            "paired vs sft_live": report.paired_ratio(
                wall, [w for w, _ in times["sft_live"]]
            )[0],
            "cpu paired vs sft_live": report.paired_ratio(
                cpu, [c for _, c in times["sft_live"]]
            )[0],
        }
        rows.append(row)
    # The fastest epochs compared: the least disturbed by other processes.
    rows = report.with_ratios(
        rows,
        value="fastest_ms",
        group=("model",),
        references=("plain", "distiller", "sft_live"),
        lower_is_better=True,
    )
    return rows, models["sft_live"], (x, y)


def _short_fits(model_name):
    """Rows of part 2's short fits for `model_name`: what a `fit` call
    costs beyond its epochs."""
    x, y = variants.arrays(model_name, SHORT_STEPS * BATCH_SIZE)
    times = {v: [] for v in SHORT_VARIANTS}
    order = list(SHORT_VARIANTS)
    for _ in range(_FIT_ROUNDS.value):
        for variant in order:
            model = _compiled(model_name, variant)
            calls = []
            for _ in range(2):
                start = (time.perf_counter(), time.process_time())
                model.fit(x, y, batch_size=BATCH_SIZE, epochs=2, verbose=0)
                calls += [
                    time.perf_counter() - start[0],
                    time.process_time() - start[1],
                ]
            times[variant].append(calls)
        order = order[1:] + order[:1]
    keys = ("first_s", "first_cpu_s", "repeated_s", "repeated_cpu_s")
    return [
        {"model": model_name, "variant": variant}
        | {
            key: statistics.median(call[i] for call in calls)
            for i, key in enumerate(keys)
        }
        for variant, calls in times.items()
    ]


def _whole_fits(model_name):
    """Rows of part 2 for `model_name`."""
    x, y = variants.arrays(model_name, FIT_EXAMPLES[model_name])
    rows = []
    for epochs in [int(e) for e in _EPOCHS.value]:
        times = {v: [] for v in FIT_VARIANTS}
        order = list(FIT_VARIANTS)
        for _ in range(_FIT_ROUNDS.value):
            for variant in order:
                model = _compiled(model_name, variant)
                start = (time.perf_counter(), time.process_time())
                model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0)
                times[variant].append(
                    (
                        time.perf_counter() - start[0],
                        time.process_time() - start[1],
                    )
                )
            order = order[1:] + order[:1]
        rows += report.with_ratios(
            [
                {
                    "model": model_name,
                    "epochs": epochs,
                    "variant": variant,
                    "fit_s": statistics.median(w for w, _ in pairs),
                    "cpu_s": statistics.median(c for _, c in pairs),
                }
                for variant, pairs in times.items()
            ],
            value="fit_s",
            group=("model", "epochs"),
            references=("plain", "distiller", "sft_live"),
            lower_is_better=True,
        )
    return rows


def _precision_changes(model_name, model, data):
    """Rows of part 3 for `model_name`: the teacher's own weights and the
    largest changes of its outputs and of the term, by precision, against
    the float32 teacher of `model` (a trained `SFTModel`)."""
    import numpy as np

    import keras_sft
    from keras_sft import teacher as teacher_module

    x, _ = data
    student = model.student.predict(x, batch_size=BATCH_SIZE, verbose=0)
    batches = range(0, len(x), BATCH_SIZE)

    def terms(outputs):
        return [
            ((student[i : i + BATCH_SIZE] - outputs[i : i + BATCH_SIZE]) ** 2)
            .astype("float64")
            .mean()
            for i in batches
        ]

    rows = []
    for precision in PRECISIONS:
        teacher = keras_sft.clone_teacher(model.teacher)
        if precision != "float32":
            teacher_module.cast_teacher(teacher, precision)
        outputs = np.asarray(
            teacher.predict(x, batch_size=BATCH_SIZE, verbose=0), "float32"
        )
        if precision == "float32":
            reference, reference_terms = outputs, terms(outputs)
        rows.append(
            {
                "model": model_name,
                "precision": precision,
                "weight_bytes": sum(w.numpy().nbytes for w in teacher.weights),
                "output_change": float(
                    np.abs(outputs - reference).max() / np.abs(reference).max()
                ),
                "term_change": max(
                    abs(a - b) / b
                    for a, b in zip(
                        terms(outputs), reference_terms, strict=True
                    )
                ),
            }
        )
    return rows


def _digits_accuracy():
    """Rows of part 3's accuracy: fine-tuning with each precision."""
    import keras
    import numpy as np
    from sklearn import datasets

    import keras_sft
    from keras_sft import teacher as teacher_module

    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    train = np.arange(len(x)) < int(0.7 * len(x))
    # The old task is the digits, the new one the same digits inverted.
    inverted = 1.0 - x
    scores = {p: [] for p in PRECISIONS}
    for seed in range(_SEEDS.value):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((64,))
        hidden = keras.layers.Dense(128, activation="relu")(inputs)
        pretrained = keras.Model(inputs, keras.layers.Dense(10)(hidden))
        pretrained.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        pretrained.fit(x[train], y[train], epochs=20, verbose=0)
        for precision in PRECISIONS:
            keras.utils.set_random_seed(seed)
            student = teacher_module.copy_model(pretrained)
            model = keras_sft.SFTModel(
                student,
                lambda_=DIGITS_LAMBDA,
                cache_teacher=False,
                teacher_dtype=None if precision == "float32" else precision,
            )
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
            model.fit(inverted[train], y[train], epochs=10, verbose=0)
            # The new task's accuracy, then the old one's.
            predictions = [
                student.predict(data[~train], verbose=0).argmax(-1)
                for data in (inverted, x)
            ]
            scores[precision].append(
                tuple(float((p == y[~train]).mean()) for p in predictions)
            )
    rows = []
    for precision, values in scores.items():
        changes = [
            (abs(n - n32), abs(o - o32))
            for (n, o), (n32, o32) in zip(
                values, scores["float32"], strict=True
            )
        ]
        rows.append(
            {
                "precision": precision,
                "new": statistics.mean(n for n, _ in values),
                "old": statistics.mean(o for _, o in values),
                "new_spread": max(n for n, _ in values)
                - min(n for n, _ in values),
                "old_spread": max(o for _, o in values)
                - min(o for _, o in values),
                "new_change": max(n for n, _ in changes),
                "old_change": max(o for _, o in changes),
            }
        )
    return rows


def _cache_ratios(fit_rows, model_name):
    """By epochs, the speed of the defaults over the cache off's in
    `fit_rows` of `model_name`: `(wall, cpu)`, the wall ratio the rows'
    own `vs sft_live`."""
    rows = [r for r in fit_rows if r["model"] == model_name]
    live_cpu = {
        r["epochs"]: r["cpu_s"] for r in rows if r["variant"] == "sft_live"
    }
    return {
        r["epochs"]: (r["vs sft_live"], live_cpu[r["epochs"]] / r["cpu_s"])
        for r in rows
        if r["variant"] == "sft_cached"
    }


def _precision_figures(steps, memory, model_name, precision):
    """What a `precision` teacher of `model_name` changes against the
    float32 teacher: its step's speed, its weights, the term."""
    step = steps[(model_name, f"sft_{precision}")]
    weights = (
        memory[precision]["weight_bytes"] / memory["float32"]["weight_bytes"]
    )
    article = "an" if precision.startswith("int") else "a"
    return (
        f"{article} {precision} teacher's step at {step['vs sft_live']:.3f}x "
        f"(CPU, paired: {step['cpu paired vs sft_live']:.3f}x) the float32 "
        f"teacher's, its weights {weights:.2f}x, the term changed by up to "
        f"{memory[precision]['term_change']:.1e}"
    )


def _decisions(step_rows, fit_rows, precision_rows, accuracy_rows):
    """One line per default, with the figures it rests on."""
    steps = {(r["model"], r["variant"]): r for r in step_rows}
    lines = []
    for model_name in _MODELS.value:
        unguarded = steps[(model_name, "sft_unguarded")]
        # The paired CPU ratio varies least from run to run: it decides.
        cost = 1 - 1 / unguarded["vs sft_live"]
        cpu_cost = 1 - 1 / unguarded["cpu paired vs sft_live"]
        lines.append(
            f"- guard_nonfinite=True ({model_name}): the guard costs "
            f"{cpu_cost:.1%} of a step in CPU time, paired "
            f"({cost:.1%} in the fastest epochs; budget "
            f"{GUARD_BUDGET:.0%}: "
            f"{'within' if cpu_cost <= GUARD_BUDGET else 'over'}); "
            f"guarded live step at "
            f"{steps[(model_name, 'sft_live')]['vs distiller']:.3f}x the "
            "Distiller's speed (with Keras's Adam update unfused: "
            f"{steps[(model_name, 'sft_keras_adam')]['vs distiller']:.3f}x)"
        )
        fits = _cache_ratios(fit_rows, model_name)
        # Below `CACHED_EPOCHS` both run the same code: how far their
        # ratios are from 1 is this run's noise.
        same = [
            r for e, pair in fits.items() if e < CACHED_EPOCHS for r in pair
        ]
        noise = max([NOISE] + [abs(1 - r) for r in same])
        slower = [
            e
            for e, pair in fits.items()
            if e >= CACHED_EPOCHS and min(pair) < 1 - noise
        ]
        lines.append(
            f"- cache_teacher=True ({model_name}): the defaults against "
            "`cache_teacher=False`, in wall and CPU time, "
            + ", ".join(
                f"{e} epochs {wall:.3f}x and {cpu:.3f}x"
                + (" (the same code)" if e < CACHED_EPOCHS else "")
                for e, (wall, cpu) in fits.items()
            )
            + (
                f"; slower by more than the noise ({noise:.0%}) at "
                f"{slower} epochs: keep the cache off there"
                if slower
                else f"; never slower by more than the noise ({noise:.0%})"
            )
        )
        memory = {
            r["precision"]: r
            for r in precision_rows
            if r["model"] == model_name
        }
        lines.append(
            f"- teacher_dtype=None ({model_name}): "
            + "; ".join(
                _precision_figures(steps, memory, model_name, precision)
                for precision in PRECISIONS[1:]
            )
            + ": opt-in, since each changes the term"
        )
    by_precision = {r["precision"]: r for r in accuracy_rows}
    lines.append(
        "- digits fine-tuning: test accuracy changed by up to "
        + ", ".join(
            f"{by_precision[p]['new_change']:.4f} (new task) and "
            f"{by_precision[p]['old_change']:.4f} (old) with {p}"
            for p in PRECISIONS[1:]
        )
        + "; the float32 runs spread over seeds by "
        f"{by_precision['float32']['new_spread']:.4f} and "
        f"{by_precision['float32']['old_spread']:.4f}"
    )
    return lines


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    print(report.machine(), flush=True)
    step_rows, precision_rows, fit_rows = [], [], []
    print("\nSteps (one epoch at a time; speed ratios of the fastest epochs):")
    print("\n".join(report.markdown([], _STEP_COLUMNS)), flush=True)
    for model_name in _MODELS.value:
        rows, live, data = _steps(model_name)
        step_rows += rows
        print("\n".join(report.markdown(rows, _STEP_COLUMNS)[2:]), flush=True)
        precision_rows += _precision_changes(model_name, live, data)
    print(
        f"\nShort fits ({SHORT_STEPS} steps, 2 epochs: a fresh model's first "
        "call, then its second):"
    )
    print("\n".join(report.markdown([], _SHORT_COLUMNS)), flush=True)
    for model_name in _MODELS.value:
        rows = _short_fits(model_name)
        print("\n".join(report.markdown(rows, _SHORT_COLUMNS)[2:]), flush=True)
    print("\nWhole fits (a fresh model, tracing included):")
    print("\n".join(report.markdown([], _FIT_COLUMNS)), flush=True)
    for model_name in _MODELS.value:
        rows = _whole_fits(model_name)
        fit_rows += rows
        print("\n".join(report.markdown(rows, _FIT_COLUMNS)[2:]), flush=True)
    print("\nTeacher precision:")
    print("\n".join(report.markdown(precision_rows, _PRECISION_COLUMNS)))
    accuracy_rows = _digits_accuracy()
    print(f"\nDigits, {_SEEDS.value} seeds, test accuracy after fine-tuning:")
    print("\n".join(report.markdown(accuracy_rows, _ACCURACY_COLUMNS)))
    print("\nDefaults:")
    print(
        "\n".join(
            _decisions(step_rows, fit_rows, precision_rows, accuracy_rows)
        )
    )
    print(f"\nEnd: {report.machine()}")


if __name__ == "__main__":
    app.run(main)
