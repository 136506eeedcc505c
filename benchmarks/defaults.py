r"""SFT's defaults across model families: the grid that chose them.

    python -m benchmarks.defaults                 # the whole grid
    python -m benchmarks.defaults --families=mlp --seeds=0 --quick

Fine-tunes each family of `benchmarks.families` to each of its shifts by
each method of `benchmarks.transfer.METHODS`, for each seed, and prints
per family the medians over seeds, then each method's worst case against
plain fine-tuning over `--choose_on` and over `--held_out`, the method of
best worst case on `--choose_on` with its worst case on `--held_out`, and
issue 25's targets at `SFTModel`'s defaults. Writes the same Markdown to
`--output_dir`/defaults.md and the rows to `--output_dir`/rows.json;
`--merge` reports several such directories together (one per seed, run
side by side, say).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import families  # noqa: E402
from benchmarks import transfer  # noqa: E402

_FAMILIES = flags.DEFINE_list(
    "families", list(families.FAMILIES), "Families to run."
)
_SHIFTS = flags.DEFINE_list(
    "shifts", [], "Shifts to run, of the families' own; all when empty."
)
_METHODS = flags.DEFINE_list(
    "methods", list(transfer.METHODS), "Methods to run."
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, one run each.")
_CHOOSE_ON = flags.DEFINE_list(
    "choose_on",
    ["mlp", "mlp_long", "cnn_bn", "cnn_bn_smooth"],
    "Families whose worst case chooses the defaults.",
)
_HELD_OUT = flags.DEFINE_list(
    "held_out", ["lm"], "Families that confirm the choice."
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "runs/defaults", "Where the rows and tables go."
)
_PRETRAINED_DIR = flags.DEFINE_string(
    "pretrained_dir",
    "runs/defaults/pretrained",
    "Where pretrained models are kept between runs (empty: not kept).",
)
_MERGE = flags.DEFINE_list(
    "merge",
    [],
    "Output directories of earlier runs: instead of training, report "
    "their rows.json together.",
)
_QUICK = flags.DEFINE_bool(
    "quick",
    False,
    "Pretrain and fine-tune for a few steps: checks that the grid runs, "
    "measures nothing.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    output_dir = _OUTPUT_DIR.value
    if _MERGE.value:
        rows = transfer.load_rows(
            [os.path.join(path, "rows.json") for path in _MERGE.value]
        )
    else:
        rows = transfer.run(
            families=tuple(_FAMILIES.value),
            methods=tuple(_METHODS.value),
            seeds=tuple(int(seed) for seed in _SEEDS.value),
            shifts=tuple(_SHIFTS.value) or None,
            pretrained_dir=None if _QUICK.value else _PRETRAINED_DIR.value,
            quick=_QUICK.value,
        )
        transfer.save_rows(rows, os.path.join(output_dir, "rows.json"))
    os.makedirs(output_dir, exist_ok=True)
    report = transfer.report(
        rows, choose_on=_CHOOSE_ON.value, held_out=_HELD_OUT.value
    )
    with open(os.path.join(output_dir, "defaults.md"), "w") as file:
        file.write(report)
    print(report)


if __name__ == "__main__":
    app.run(main)
