"""Wall time of a whole `fit` call on arrays, one-time costs included.

`throughput.py` reports steady epochs and the teacher cache's one-time
pass apart. This times what a user waits for: a fresh model's
`fit(x, y, batch_size=128, epochs=E)` on the arrays of `throughput.py`,
tracing, the cache's `teacher.predict` pass and every epoch included, for
each `E` of `--epochs` (1, 2, 5 and 20). Each round builds every variant
anew (`plain`, `distiller`, `sft_live` with `cache_teacher=False`,
`sft_cached` at `SFTModel`'s defaults, whatever they cache; those of them
that `--variants` names) and times its call, in turns in a rotating
order; the table gives the median call and each variant's speed relative
to `plain`, to the Distiller and to `sft_live` (the reference's seconds
over the variant's), and against `sft_live` paired by round (the median
over rounds of the two calls' ratio, which load that changes from round
to round falls on alike): `sft_cached`'s says whether the defaults beat
not caching.

    python -m benchmarks.whole_fit
    python -m benchmarks.whole_fit --epochs=3 --models=mlp
    python -m benchmarks.whole_fit --variants=sft_live,sft_cached
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks import throughput  # noqa: E402

VARIANTS = ("plain", "distiller", "sft_live", "sft_cached")
_COLUMNS = [
    ("model", "model", "{}"),
    ("variant", "variant", "{}"),
    ("epochs", "epochs", "{}"),
    ("fit s", "fit_s", "{:.2f}"),
    ("vs plain", "vs plain", "{:.2f}"),
    ("vs distiller", "vs distiller", "{:.2f}"),
    ("vs sft_live", "vs sft_live", "{:.2f}"),
    ("paired vs sft_live", "paired vs sft_live", "{:.2f}"),
]

# `--models`, `--variants` and `--rounds` are throughput's flags, and so
# are `--jit_compile` and `--steps_per_execution`, which apply here too.
_EPOCHS = flags.DEFINE_list(
    "epochs",
    ["1", "2", "5", "20"],
    "Epochs of the timed `fit` calls; rows for each.",
)
flags.register_validator(
    "epochs",
    lambda values: all(v.isdigit() and int(v) >= 1 for v in values),
    "Invalid value for flag `epochs`. Expected a list of integers >= 1.",
)


def _measure(model_name, epochs):
    """Seconds of each round's whole `fit` call of `epochs`, by variant."""
    x, y = throughput._arrays(model_name)
    times = {v: [] for v in VARIANTS if v in throughput._VARIANTS.value}
    order = list(times)
    for _ in range(throughput._ROUNDS.value):
        for variant in order:
            model = throughput._compiled(model_name, variant)
            start = time.perf_counter()
            model.fit(
                x,
                y,
                batch_size=throughput.BATCH_SIZE,
                epochs=epochs,
                verbose=0,
            )
            times[variant].append(time.perf_counter() - start)
        order = order[1:] + order[:1]
    return times


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    print(report.machine(), flush=True)
    columns = report.markdown([], _COLUMNS)
    print("\n".join(columns), flush=True)
    for model_name in throughput._MODELS.value:
        for epochs in [int(v) for v in _EPOCHS.value]:
            times = _measure(model_name, epochs)
            live = times.get("sft_live")
            rows = report.with_ratios(
                [
                    {
                        "model": model_name,
                        "variant": variant,
                        "epochs": epochs,
                        "fit_s": statistics.median(seconds),
                        "paired vs sft_live": None
                        if live is None
                        else report.paired_ratio(seconds, live)[0],
                    }
                    for variant, seconds in times.items()
                ],
                value="fit_s",
                group=("model", "epochs"),
                references=("plain", "distiller", "sft_live"),
                lower_is_better=True,
            )
            print("\n".join(report.markdown(rows, _COLUMNS)[2:]), flush=True)


if __name__ == "__main__":
    app.run(main)
