"""Wall time of a whole `fit` call on arrays, one-time costs included.

`throughput.py` reports steady epochs and the teacher cache's one-time
pass apart. This times what a user waits for: a fresh model's
`fit(x, y, batch_size=128, epochs=--epochs)` on the arrays of
`throughput.py`, tracing, the cache's `teacher.predict` pass and every
epoch included. Each round builds every variant anew (`plain`,
`distiller`, `sft_live` with `cache_teacher=False`, `sft_cached` at
`SFTModel`'s defaults) and times its call, in turns in a rotating order;
the table gives the median call and each variant's speed relative to
`plain` (plain's seconds over the variant's).

    python -m benchmarks.whole_fit
    python -m benchmarks.whole_fit --epochs=3 --models=mlp
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import throughput  # noqa: E402

VARIANTS = ("plain", "distiller", "sft_live", "sft_cached")

# `--models` and `--rounds` are throughput's flags.
_EPOCHS = flags.DEFINE_integer(
    "epochs", 5, "Epochs of each timed `fit` call.", lower_bound=1
)


def _measure(model_name):
    """Median seconds of a whole `fit` call, by variant."""
    x, y = throughput._arrays(model_name)
    times = {v: [] for v in VARIANTS}
    order = list(VARIANTS)
    for _ in range(throughput._ROUNDS.value):
        for variant in order:
            model = throughput._compiled(model_name, variant)
            start = time.perf_counter()
            model.fit(
                x,
                y,
                batch_size=throughput.BATCH_SIZE,
                epochs=_EPOCHS.value,
                verbose=0,
            )
            times[variant].append(time.perf_counter() - start)
        order = order[1:] + order[:1]
    return {v: statistics.median(t) for v, t in times.items()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # `_compiled` reads throughput's `--input`: these calls take arrays.
    flags.FLAGS.input = "arrays"
    print(f"| model | variant | fit s ({_EPOCHS.value} epochs) | vs plain |")
    print("| --- | --- | --- | --- |")
    for model_name in throughput._MODELS.value:
        seconds = _measure(model_name)
        for variant, value in seconds.items():
            print(
                f"| {model_name} | {variant} | {value:.2f} "
                f"| {seconds['plain'] / value:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
