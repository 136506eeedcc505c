r"""The forgetting benchmark: shifts times methods times seeds, offline.

    python -m examples.forgetting_benchmark
    python -m examples.forgetting_benchmark --quick   # a one-minute check

Fine-tunes an MLP pretrained on `--dataset` to each of `--shifts` by each
of `--methods` for each of `--seeds`
(`benchmarks.experiments.forgetting_benchmark`);
writes `forgetting.md`, `forgetting.png`, `sweep.md` and `rows.json` to
`--output_dir` and prints the table of `forgetting.md`. `--merge` reports
several such directories together.
"""

import os

from absl import flags

from benchmarks.experiments import forgetting_benchmark as benchmark
from examples import common_flags
from examples import experiment_flags
from examples.lib import console
from examples.lib import presets

SHIFTS = flags.DEFINE_list(
    "shifts", list(benchmark.SHIFTS), f"Shifts, of {list(benchmark.SHIFTS)}."
)
METHODS = flags.DEFINE_list(
    "methods",
    list(benchmark.METHODS),
    f"Methods, of {list(benchmark.METHODS)}.",
)
SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, one run each.")
MERGE = flags.DEFINE_list(
    "merge",
    [],
    "Output directories of earlier runs (one per seed, say): instead of "
    "training, write the reports of their rows.json together.",
)
QUICK = flags.DEFINE_bool(
    "quick", False, f"Overrides the grid's flags with {benchmark.QUICK}."
)
for _flag in (
    common_flags.DATASET,
    common_flags.DATA_DIR,
    common_flags.EPOCHS,
    common_flags.DETERMINISTIC,
    experiment_flags.PRETRAIN_EPOCHS,
    experiment_flags.OUTPUT_DIR,
):
    flags.declare_key_flag(_flag.name)


def main(argv):
    common_flags.refuse_arguments(argv)
    seeds = tuple(int(seed) for seed in SEEDS.value)
    output_dir = experiment_flags.OUTPUT_DIR.value
    if MERGE.value:
        benchmark.merge_reports(MERGE.value, output_dir)
    else:
        common_flags.set_determinism()
        benchmark.run_grid(
            quick=QUICK.value,
            epochs=common_flags.EPOCHS.value,
            output_dir=output_dir,
            shifts=tuple(SHIFTS.value),
            methods=tuple(METHODS.value),
            seeds=seeds,
            pretrain_epochs=experiment_flags.PRETRAIN_EPOCHS.value,
            dataset=common_flags.DATASET.value,
            data_dir=common_flags.DATA_DIR.value,
        )
    path = os.path.join(output_dir, "forgetting.md")
    with open(path) as file:
        console.print_table(
            f"Forgetting benchmark (also in {path}):", file.read()
        )


if __name__ == "__main__":
    common_flags.run(main, preset=presets.FORGETTING_BENCHMARK)
