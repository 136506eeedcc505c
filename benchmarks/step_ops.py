"""Graph ops and time of one training step, without `fit` around it.

For each variant of `benchmarks/throughput.py` (same models, same batch of
128), traces the variant's `train_step` with `tf.function`, counts the ops
of its graph, and times the traced step on one fixed in-memory batch:
`--rounds` rounds (6) of `--steps` steps (50) per variant, taken in turns in a
rotating order, reporting the fastest and the median round, and the
median over rounds of each round's time over `sft_live`'s (paired; the
guard's cost is one over `sft_unguarded`'s). This isolates the step's own
cost from `fit`'s Python loop and the input pipeline; on a small model,
where a step takes a few milliseconds, the op count matters as much as
the FLOPs.

    python -m benchmarks.step_ops
    python -m benchmarks.step_ops --models=mlp --rounds=20
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

# `--models`, `--variants` and `--rounds` are throughput's flags; its
# PyTorch variants have no Keras step and are left out, and `--input` must
# stay `dataset`: the step runs on one batch of the dataset.
_STEPS = flags.DEFINE_integer(
    "steps", 50, "Steps per timed round.", lower_bound=1
)


def _traced_step(model_name, variant):
    """`(tf.function of the variant's train_step, its batch)`, warmed up."""
    import tensorflow as tf

    model, data, _ = throughput._prepare(model_name, variant)
    dataset = data["x"]
    data = next(iter(dataset))
    # `fit` builds the model, its optimizer and metrics.
    model.fit(dataset.take(1), verbose=0)
    step = tf.function(model.train_step)
    step(data)
    return step, data


def _measure(model_name, variants):
    """Op counts and per-step milliseconds (fastest, median) by variant."""
    steps = {v: _traced_step(model_name, v) for v in variants}
    ops = {
        v: len(step.get_concrete_function(data).graph.get_operations())
        for v, (step, data) in steps.items()
    }
    times = {v: [] for v in variants}
    order = list(variants)
    for _ in range(throughput._ROUNDS.value):
        for variant in order:
            step, data = steps[variant]
            start = time.perf_counter()
            for _ in range(_STEPS.value):
                step(data)
            elapsed = time.perf_counter() - start
            times[variant].append(elapsed / _STEPS.value * 1e3)
        order = order[1:] + order[:1]
    # Each round's time over `sft_live`'s in the same round: load that
    # changes from round to round falls on both.
    live = times.get("sft_live")
    return {
        v: (
            ops[v],
            min(times[v]),
            statistics.median(times[v]),
            statistics.median(
                a / b for a, b in zip(times[v], live, strict=True)
            )
            if live
            else None,
        )
        for v in variants
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    print(report.machine(), flush=True)
    print(
        "| model | variant | graph ops | step ms (fastest) | step ms (median) "
        "| vs plain (fastest) | time vs sft_live (paired median) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    if throughput._INPUT.value != "dataset":
        raise app.UsageError("step_ops times steps on a dataset's batch")
    variants = [
        v for v in throughput._VARIANTS.value if v in throughput.VARIANTS
    ]
    for model_name in throughput._MODELS.value:
        results = _measure(model_name, variants)
        plain = results.get("plain")
        for variant, (ops, fastest, median, paired) in results.items():
            ratio = f"{plain[1] / fastest:.2f}" if plain else ""
            paired = "" if paired is None else f"{paired:.3f}"
            print(
                f"| {model_name} | {variant} | {ops} | {fastest:.2f} "
                f"| {median:.2f} | {ratio} | {paired} |",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
