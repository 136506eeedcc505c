r"""The forgetting experiment: plain fine-tuning against SFT, offline.

    python -m examples.demo              # or: make demo

1. Pretrain an MLP on all classes of `--dataset` (the first half of its
   train split; the 8x8 digits by default).
2. Fine-tune it on new data (the second half of the train split) that
   covers only `--classes` (0-4 by default), all of it moved to a new
   domain by `--shift` (`invert` by default: negatives of the digits).
   Once with `lambda=0` (plain fine-tuning) and once per value of
   `--lambdas` with SFT.
3. Measure on the test split, for each model: accuracy on the classes the
   fine-tuning data does not cover, in their original domain (what was
   learned before), accuracy on the fine-tuned classes in the new domain
   (what is learned now), and overall accuracy on both together.

Each `--l2_sp_alphas` value adds a row of plain fine-tuning with L2-SP, the
weight-space alternative. Then, unless `--new_head_lambdas` is empty, the
new-head experiment of `examples/new_head.py` (Learning without
Forgetting: pretrain on 0-4, learn 5-9 as a new head).

Writes `results.md` (the table), `forgetting.png` (retained and new-task
accuracy across lambda) and `new_head.md` to `--output_dir`, beside the
saved models. The demo ignores `--train_split` and `--test_split`.
"""

import os

import matplotlib
from absl import app
from absl import flags
from absl import logging

from examples import common_flags
from examples import experiment
from examples import new_head
from keras_sft import data

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402  (after choosing the backend)

OUTPUT_DIR = flags.DEFINE_string(
    "output_dir",
    "runs/demo",
    "Directory for the models, results.md and forgetting.png.",
)
LAMBDAS = flags.DEFINE_list(
    "lambdas",
    ["0.01", "0.03", "0.1", "0.3", "1"],
    "SFT weights to compare with plain fine-tuning (lambda=0, always run).",
)
L2_SP_ALPHAS = flags.DEFINE_list(
    "l2_sp_alphas",
    ["0.001", "0.01", "0.1"],
    "Strengths of L2-SP (weight-space regularisation towards the "
    "pretrained weights) to compare with SFT, one run each.",
)
NEW_HEAD_LAMBDAS = flags.DEFINE_list(
    "new_head_lambdas",
    ["0.1", "1"],
    "SFT weights of the new-head experiment (Learning without Forgetting), "
    "beside lambda=0; none runs it not.",
)
PRETRAIN_EPOCHS = flags.DEFINE_integer(
    "pretrain_epochs",
    30,
    "Epochs of pretraining (--epochs is for each fine-tuning).",
    lower_bound=1,
)
for _flag in (LAMBDAS, L2_SP_ALPHAS, NEW_HEAD_LAMBDAS):
    flags.register_validator(
        _flag,
        common_flags.nonnegative_floats,
        message=f"--{_flag.name} must be floats >= 0",
    )
flags.adopt_module_key_flags(common_flags)

_MODEL = "mlp"
_PRETRAIN_SPLIT = "train[:50%]"
_FINETUNE_SPLIT = "train[50%:]"
_TEST_SPLIT = "test"


def run_demo(
    *,
    output_dir,
    lambdas,
    classes,
    l2_sp_alphas=(),
    shift,
    strategy,
    dataset="digits",
    data_dir=None,
    epochs=80,
    pretrain_epochs=30,
    batch_size=32,
    learning_rate=1e-3,
    seed=0,
    jit_compile=False,
):
    """Runs the experiment; writes and returns its table.

    Args:
        output_dir: String, where models, `results.md` and `forgetting.png`
            go.
        lambdas: Sequence of floats > 0, the SFT runs beside plain
            fine-tuning.
        classes: Sequence of ints, the classes the fine-tuning data covers.
        l2_sp_alphas: Sequence of floats >= 0: one plain fine-tuning run
            with an L2-SP penalty towards the pretrained weights
            (`keras_sft.apply_l2_sp`) per value, to compare weight-space
            with output-space regularisation. Defaults to `()`.
        shift: String, the domain shift of the fine-tuning data (a name of
            `keras_sft.data.SHIFTS` other than `"none"`).
        strategy: `tf.distribute.Strategy` to train under.
        dataset: String, `"digits"` or a TFDS name. Defaults to `"digits"`.
        data_dir: String, the TFDS data directory. Defaults to `None`.
        epochs: Int, epochs of each fine-tuning. Defaults to `80`.
        pretrain_epochs: Int, epochs of pretraining. Defaults to `30`.
        batch_size: Int, the global batch size. Defaults to `32`.
        learning_rate: Float, Adam's learning rate. Defaults to `1e-3`.
        seed: Int, the seed of weights, Keras and shuffling. Defaults to `0`.
        jit_compile: Bool, XLA compilation. Defaults to `False`.

    Returns:
        A list of dicts, one per model, with keys `"model"`, `"lambda"`,
        `"retained"`, `"new"` and `"overall"` (accuracies in `[0, 1]`).
    """
    os.makedirs(output_dir, exist_ok=True)
    pretrain_set, num_classes = data.load(
        dataset, split=_PRETRAIN_SPLIT, data_dir=data_dir
    )
    covered = sorted(classes)
    uncovered = [c for c in range(num_classes) if c not in covered]
    finetune_set, _ = data.load(
        dataset, split=_FINETUNE_SPLIT, data_dir=data_dir
    )
    finetune_set = data.shift_domain(
        data.select_classes(finetune_set, covered), shift
    )
    test_set, _ = data.load(dataset, split=_TEST_SPLIT, data_dir=data_dir)
    # Uncovered classes as they were, covered classes in the new domain:
    # what the fine-tuned model is expected to recognise afterwards.
    evaluation = data.batch(
        data.select_classes(test_set, uncovered).concatenate(
            data.shift_domain(data.select_classes(test_set, covered), shift)
        ),
        batch_size=256,
    )

    pretrained_path = os.path.join(output_dir, "pretrained.keras")
    pretrained = experiment.pretrain(
        model_name=_MODEL,
        train=data.batch(
            pretrain_set, batch_size=batch_size, shuffle_seed=seed
        ),
        validation=None,
        input_shape=tuple(pretrain_set.element_spec[0].shape),
        num_classes=num_classes,
        output=pretrained_path,
        strategy=strategy,
        epochs=pretrain_epochs,
        learning_rate=learning_rate,
        seed=seed,
        jit_compile=jit_compile,
        verbose=0,
    )
    rows = [
        _row("pretrained", None, pretrained, evaluation, covered, uncovered)
    ]

    def finetune(name, lambda_, l2_sp_alpha=None):
        model = experiment.finetune(
            pretrained=pretrained_path,
            train=data.batch(
                finetune_set, batch_size=batch_size, shuffle_seed=seed
            ),
            validation=None,
            lambda_=lambda_,
            output=os.path.join(output_dir, f"finetuned_{len(rows)}.keras"),
            strategy=strategy,
            epochs=epochs,
            learning_rate=learning_rate,
            seed=seed,
            jit_compile=jit_compile,
            l2_sp_alpha=l2_sp_alpha,
            verbose=0,
        )
        # L2-SP rows have no lambda: they stay off the lambda axis.
        row_lambda = None if l2_sp_alpha is not None else lambda_
        rows.append(
            _row(
                name, row_lambda, model.student, evaluation, covered, uncovered
            )
        )
        logging.info("%s", _format_row(rows[-1]))

    for lambda_ in [0.0, *lambdas]:
        finetune("plain fine-tuning" if lambda_ == 0 else "SFT", lambda_)
    for alpha in l2_sp_alphas:
        finetune(f"L2-SP, alpha={alpha:g}", 0.0, l2_sp_alpha=alpha)

    table = _markdown_table(rows, covered, uncovered, shift)
    with open(os.path.join(output_dir, "results.md"), "w") as file:
        file.write(table)
    _plot(rows, os.path.join(output_dir, "forgetting.png"), shift)
    logging.info("Results (also in %s):\n%s", output_dir, table)
    return rows


def _row(name, lambda_, model, evaluation, covered, uncovered):
    """One table row: the accuracies of `model` on the evaluation set."""
    accuracies = experiment.accuracy_by_group(
        model, evaluation, groups=[uncovered, covered]
    )
    return {
        "model": name,
        "lambda": lambda_,
        "retained": accuracies[experiment.group_name(uncovered)],
        "new": accuracies[experiment.group_name(covered)],
        "overall": accuracies["overall"],
    }


def _format_row(row):
    """`| model | lambda | retained | new | overall |` in percent."""
    lambda_ = "-" if row["lambda"] is None else f"{row['lambda']:g}"
    return (
        f"| {row['model']} | {lambda_} | {100 * row['retained']:.1f} | "
        f"{100 * row['new']:.1f} | {100 * row['overall']:.1f} |"
    )


def _markdown_table(rows, covered, uncovered, shift):
    """The results as a markdown table with a header naming the groups."""
    retained = f"classes {experiment.group_name(uncovered)}, original domain"
    new = f"classes {experiment.group_name(covered)}, {shift}"
    header = (
        f"| model | lambda | retained: {retained} | new: {new} | overall |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
    )
    return header + "\n".join(_format_row(row) for row in rows) + "\n"


def _plot(rows, path, shift):
    """Retained and new-task accuracy against lambda, as a PNG."""
    tuned = [row for row in rows if row["lambda"] is not None]
    lambdas = [row["lambda"] for row in tuned]
    figure, axes = pyplot.subplots(figsize=(6, 4))
    axes.plot(
        lambdas,
        [100 * row["retained"] for row in tuned],
        "o-",
        label="retained (uncovered classes, original domain)",
    )
    axes.plot(
        lambdas,
        [100 * row["new"] for row in tuned],
        "s-",
        label=f"new task (fine-tuned classes, {shift})",
    )
    axes.axhline(
        100 * rows[0]["retained"],
        color="gray",
        linestyle=":",
        label="pretrained, retained",
    )
    experiment.finish_lambda_plot(
        figure,
        axes,
        lambdas,
        ylabel="test accuracy (%)",
        title="Forgetting against lambda",
        path=path,
    )
    pyplot.close(figure)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    strategy = common_flags.set_up()
    run_demo(
        output_dir=OUTPUT_DIR.value,
        lambdas=[float(v) for v in LAMBDAS.value if float(v) > 0],
        l2_sp_alphas=[float(v) for v in L2_SP_ALPHAS.value],
        classes=common_flags.parse_classes(common_flags.CLASSES.value),
        shift=common_flags.SHIFT.value,
        strategy=strategy,
        dataset=common_flags.DATASET.value,
        data_dir=common_flags.DATA_DIR.value,
        epochs=common_flags.EPOCHS.value,
        pretrain_epochs=PRETRAIN_EPOCHS.value,
        batch_size=common_flags.BATCH_SIZE.value,
        learning_rate=common_flags.LEARNING_RATE.value,
        seed=common_flags.SEED.value,
        jit_compile=common_flags.JIT_COMPILE.value,
    )
    if NEW_HEAD_LAMBDAS.value:
        rows = new_head.run_new_head(
            lambdas=[float(v) for v in NEW_HEAD_LAMBDAS.value if float(v) > 0],
            strategy=strategy,
            seed=common_flags.SEED.value,
        )
        table = new_head.markdown_table(rows)
        with open(os.path.join(OUTPUT_DIR.value, "new_head.md"), "w") as file:
            file.write(table)
        logging.info("New head, Learning without Forgetting:\n%s", table)


if __name__ == "__main__":
    # The demo's own defaults for the shared flags: fine-tune on the
    # negatives of classes 0-4, long enough for plain fine-tuning to fit them.
    flags.FLAGS.set_default("classes", ["0-4"])
    flags.FLAGS.set_default("shift", "invert")
    flags.FLAGS.set_default("epochs", 80)
    # Bit-identical tables from run to run, as the README reports them.
    flags.FLAGS.set_default("deterministic", True)
    common_flags.run(main)
