"""The forgetting experiment of `examples.demo`: plain fine-tuning vs SFT.

A classifier is pretrained on all classes, then fine-tuned on new data that
covers only some classes, all moved to a new domain; once plainly, once
per SFT weight, once per L2-SP strength and once per SFT weight with the
consistency term on anchors (unlabeled inputs of the pretraining split).
Each model is scored on the classes the new data does not cover, in their
original domain (retained), and on the covered classes in the new domain
(new). The retained accuracy is also watched while each fine-tuning runs
(`keras_sft.ForgettingMonitor`): a second table gives it at a few epochs,
with the student's agreement with its teacher at the end.
"""

import dataclasses
import os

from examples.lib import accuracy
from examples.lib import arrays
from examples.lib import console
from examples.lib import plots
from examples.lib import training
from keras_sft import data

MODEL = "mlp"
PRETRAIN_SPLIT = "train[:50%]"
FINETUNE_SPLIT = "train[50%:]"
TEST_SPLIT = "test"


def run_demo(
    *,
    output_dir,
    lambdas,
    classes,
    shift,
    strategy,
    config,
    pretrain_epochs,
    l2_sp_alphas=(),
    anchor_lambdas=(),
    anchor_count=500,
    dataset="digits",
    data_dir=None,
):
    """Runs the experiment; writes and prints its tables, returns its rows.

    Progress goes to stderr (`console.Progress`), the table to stdout.

    Args:
        output_dir: String, where models, `results.md` and `forgetting.png`
            go.
        lambdas: Sequence of floats > 0, the SFT runs beside plain
            fine-tuning.
        classes: Sequence of ints, the classes the fine-tuning data covers.
        shift: String, the domain shift of the fine-tuning data (a name of
            `keras_sft.data.SHIFTS` other than `"none"`).
        strategy: `tf.distribute.Strategy` to train under.
        config: `TrainingConfig` of each fine-tuning (and of pretraining,
            but for its epochs); training is quiet.
        pretrain_epochs: Int, epochs of pretraining.
        l2_sp_alphas: Sequence of floats >= 0: one plain fine-tuning run
            with an L2-SP penalty towards the pretrained weights
            (`keras_sft.apply_l2_sp`) per value, to compare weight-space
            with output-space regularisation. Defaults to `()`.
        anchor_lambdas: Sequence of floats > 0: one SFT run per value with
            the consistency term on `anchor_count` unlabeled inputs of the
            pretraining split instead of on the new inputs
            (`SFTModel.fit(anchor_x=...)`). Defaults to `()`.
        anchor_count: Int > 0, the number of anchor inputs, drawn with
            `config.seed`. Defaults to `500`.
        dataset: String, `"digits"` or a TFDS name. Defaults to `"digits"`.
        data_dir: String, the TFDS data directory. Defaults to `None`.

    Returns:
        A list of dicts, one per model, with keys `"model"`, `"lambda"`,
        `"retained"`, `"new"` and `"overall"` (accuracies in `[0, 1]`), and
        `"anchors"` (the number of anchor inputs, 0 for none); those of the
        fine-tuned models also `"retained_by_epoch"` (the retained accuracy
        at each epoch's end, a list) and `"teacher_agreement"` (at the
        end), from `keras_sft.ForgettingMonitor`.
    """
    config = dataclasses.replace(config, verbose=0)
    os.makedirs(output_dir, exist_ok=True)
    pretrain_set, num_classes = data.load(
        dataset, split=PRETRAIN_SPLIT, data_dir=data_dir
    )
    covered = sorted(classes)
    uncovered = [c for c in range(num_classes) if c not in covered]
    finetune_set, _ = data.load(
        dataset, split=FINETUNE_SPLIT, data_dir=data_dir
    )
    finetune_set = data.shift_domain(
        data.select_classes(finetune_set, covered), shift
    )
    test_set, _ = data.load(dataset, split=TEST_SPLIT, data_dir=data_dir)
    retained_set = data.select_classes(test_set, uncovered)
    # Uncovered classes as they were, covered classes in the new domain:
    # what the fine-tuned model is expected to recognise afterwards.
    evaluation = data.batch(
        retained_set.concatenate(
            data.shift_domain(data.select_classes(test_set, covered), shift)
        ),
        batch_size=256,
    )

    def batches(dataset):
        return data.batch(
            dataset, batch_size=config.batch_size, shuffle_seed=config.seed
        )

    def score(name, lambda_, model, anchors=0):
        accuracies = accuracy.accuracy_by_group(
            model, evaluation, groups=[uncovered, covered]
        )
        return {
            "model": name,
            "lambda": lambda_,
            "retained": accuracies[accuracy.group_name(uncovered)],
            "new": accuracies[accuracy.group_name(covered)],
            "overall": accuracies["overall"],
            "anchors": anchors,
        }

    progress = console.Progress(
        2 + len(lambdas) + len(l2_sp_alphas) + len(anchor_lambdas)
    )
    progress.step("pretraining on all classes")
    pretrained_path = os.path.join(output_dir, "pretrained.keras")
    pretrained = training.pretrain(
        model_name=MODEL,
        train=batches(pretrain_set),
        validation=None,
        input_shape=tuple(pretrain_set.element_spec[0].shape),
        num_classes=num_classes,
        output=pretrained_path,
        strategy=strategy,
        config=dataclasses.replace(config, epochs=pretrain_epochs),
    )
    rows = [score("pretrained", None, pretrained)]
    anchor_x = arrays.sample_inputs(
        pretrain_set, anchor_count, seed=config.seed
    )
    runs = [(0.0, None, None), *((value, None, None) for value in lambdas)]
    runs += [(0.0, alpha, None) for alpha in l2_sp_alphas]
    runs += [(value, None, anchor_x) for value in anchor_lambdas]
    for lambda_, l2_sp_alpha, anchors in runs:
        if anchors is not None:
            name, row_lambda = f"SFT, {len(anchors)} anchors", lambda_
        elif l2_sp_alpha is not None:
            # L2-SP rows have no lambda: they stay off the lambda axis.
            name, row_lambda = f"L2-SP, alpha={l2_sp_alpha:g}", None
        else:
            name = "plain fine-tuning" if lambda_ == 0 else "SFT"
            row_lambda = lambda_
        progress.step(
            name if row_lambda is None else f"{name}, lambda={row_lambda:g}"
        )
        model = training.finetune(
            pretrained=pretrained_path,
            train=batches(finetune_set),
            validation=None,
            lambda_=lambda_,
            output=os.path.join(output_dir, f"finetuned_{len(rows)}.keras"),
            strategy=strategy,
            config=config,
            l2_sp_alpha=l2_sp_alpha,
            anchor_x=anchors,
            # The retained set of the table, watched at each epoch's end,
            # in one batch for the digits (a second, smaller batch would
            # trace each model's predict function a second time).
            callbacks=[
                training.forgetting_monitor(retained_set, batch_size=1024)
            ],
        )
        row = score(
            name,
            row_lambda,
            model.student,
            0 if anchors is None else len(anchors),
        )
        history = model.history.history
        row["retained_by_epoch"] = history["retained_accuracy"]
        row["teacher_agreement"] = history["teacher_agreement"][-1]
        rows.append(row)

    table = _markdown_table(rows, covered, uncovered, shift)
    results_path = os.path.join(output_dir, "results.md")
    with open(results_path, "w") as file:
        file.write(table)
    plots.plot_forgetting(
        rows, os.path.join(output_dir, "forgetting.png"), shift
    )
    console.print_table(f"Forgetting (also in {results_path}):", table)
    by_epoch = _by_epoch_table(rows[1:], config.epochs)
    by_epoch_path = os.path.join(output_dir, "retained_by_epoch.md")
    with open(by_epoch_path, "w") as file:
        file.write(by_epoch)
    console.print_table(
        "Retained accuracy while fine-tuning, at the end of some epochs "
        f"(keras_sft.ForgettingMonitor; also in {by_epoch_path}):",
        by_epoch,
    )
    return rows


def _format_row(row):
    """`| model | lambda | retained | new | overall |` in percent."""
    lambda_ = "-" if row["lambda"] is None else f"{row['lambda']:g}"
    return (
        f"| {row['model']} | {lambda_} | {100 * row['retained']:.1f} | "
        f"{100 * row['new']:.1f} | {100 * row['overall']:.1f} |"
    )


def _markdown_table(rows, covered, uncovered, shift):
    """The results as a markdown table with a header naming the groups."""
    retained = f"classes {accuracy.group_name(uncovered)}, original domain"
    new = f"classes {accuracy.group_name(covered)}, {shift}"
    header = (
        f"| model | lambda | retained: {retained} | new: {new} | overall |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
    )
    return header + "\n".join(_format_row(row) for row in rows) + "\n"


# The epochs the second table shows, where the run has them (and its last).
_SHOWN_EPOCHS = (1, 5, 10, 20, 40)


def _by_epoch_table(rows, epochs):
    """The retained accuracy of each fine-tuned model at some epochs, and
    its agreement with its teacher at the end, as a markdown table."""
    shown = sorted({e for e in _SHOWN_EPOCHS if e < epochs} | {epochs})
    header = (
        "| model | lambda | "
        + " | ".join(f"epoch {epoch}" for epoch in shown)
        + " | teacher agreement |\n"
        + "| --- | ---: |"
        + " ---: |" * (len(shown) + 1)
        + "\n"
    )
    lines = []
    for row in rows:
        lambda_ = "-" if row["lambda"] is None else f"{row['lambda']:g}"
        cells = [row["model"], lambda_]
        cells += [
            f"{100 * row['retained_by_epoch'][epoch - 1]:.1f}"
            for epoch in shown
        ]
        cells.append(f"{100 * row['teacher_agreement']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"
