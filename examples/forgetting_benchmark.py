r"""The forgetting benchmark: shifts times methods times seeds, offline.

    python -m examples.forgetting_benchmark
    python -m examples.forgetting_benchmark --quick   # a one-minute check

Pretrains an MLP on the first half of `--dataset`'s train split and
fine-tunes it to each shift of `--shifts` by each method of `--methods`,
for each seed of `--seeds` (see `examples.lib.forgetting_benchmark`).
Writes `forgetting.md` (retained, new and overall test accuracy, mean and
spread over seeds), `forgetting.png` (retained against new) and
`sweep.md` (each SFT distance at each fixed lambda, over shifts and seeds)
to `--output_dir`, with the rows in `rows.json`; `--merge` writes the
reports of several such directories together (seeds run side by side).
"""

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from examples.lib import forgetting_benchmark  # noqa: E402

# What `--quick` runs: one seed, two shifts, two methods, few epochs.
QUICK = {
    "seeds": (0,),
    "shifts": ("invert", "new_head"),
    "methods": ("plain", "SFT normalized_mse"),
    "epochs": 3,
    "pretrain_epochs": 3,
}

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "runs/forgetting", "Directory of the table and the plot."
)
_DATASET = flags.DEFINE_string(
    "dataset",
    "digits",
    "`digits` (offline, bundled with scikit-learn) or a TFDS name.",
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The TFDS data directory.")
_SHIFTS = flags.DEFINE_list(
    "shifts",
    list(forgetting_benchmark.SHIFTS),
    f"Shifts, of {list(forgetting_benchmark.SHIFTS)}.",
)
_METHODS = flags.DEFINE_list(
    "methods",
    list(forgetting_benchmark.METHODS),
    f"Methods, of {list(forgetting_benchmark.METHODS)}.",
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, one run each.")
_EPOCHS = flags.DEFINE_integer(
    "epochs",
    forgetting_benchmark.TRAINING.epochs,
    "Epochs of each fine-tuning.",
    lower_bound=1,
)
_PRETRAIN_EPOCHS = flags.DEFINE_integer(
    "pretrain_epochs",
    forgetting_benchmark.PRETRAIN_EPOCHS,
    "Epochs of pretraining.",
    lower_bound=1,
)
_MERGE = flags.DEFINE_list(
    "merge",
    [],
    "Output directories of earlier runs (one per seed, say): instead of "
    "training, write the reports of their rows.json together.",
)
_QUICK = flags.DEFINE_bool(
    "quick", False, f"Overrides the grid's flags with {QUICK}."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = {
        "seeds": tuple(int(seed) for seed in _SEEDS.value),
        "shifts": tuple(_SHIFTS.value),
        "methods": tuple(_METHODS.value),
        "epochs": _EPOCHS.value,
        "pretrain_epochs": _PRETRAIN_EPOCHS.value,
    }
    if _MERGE.value:
        _merge(_MERGE.value)
        return
    if _QUICK.value:
        settings.update(QUICK)
    forgetting_benchmark.run_benchmark(
        output_dir=_OUTPUT_DIR.value,
        shifts=settings["shifts"],
        methods=settings["methods"],
        seeds=settings["seeds"],
        config=dataclasses.replace(
            forgetting_benchmark.TRAINING, epochs=settings["epochs"]
        ),
        pretrain_epochs=settings["pretrain_epochs"],
        dataset=_DATASET.value,
        data_dir=_DATA_DIR.value,
    )


def _merge(directories):
    """Writes the reports of the rows of `directories` to `--output_dir`."""
    rows, sweep = [], []
    for directory in directories:
        with open(os.path.join(directory, "rows.json")) as file:
            saved = json.load(file)
        rows += saved["rows"]
        sweep += saved["sweep"]
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    forgetting_benchmark.write_reports(rows, sweep, _OUTPUT_DIR.value)


if __name__ == "__main__":
    app.run(main)
