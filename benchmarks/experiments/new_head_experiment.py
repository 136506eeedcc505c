"""The new-head experiment: learn new classes without forgetting old ones.

Learning without Forgetting's setting, on the digits: a classifier is
pretrained on classes 0-4; the new task is classes 5-9, learned by a new
head on the pretrained features (`keras_sft.add_head`). Plain fine-tuning
(lambda=0) trains the shared layers for the new head alone, so the old
head's outputs drift; SFT keeps the old head's outputs near the frozen
teacher's on the new data. Each head is scored on its own task's test
images, as in the paper.

`examples.demo` runs it after the forgetting experiment (`TRAINING` and
`PRETRAIN_EPOCHS` are its settings).
"""

import os

import keras

import keras_sft
from examples.lib import accuracy
from examples.lib import arrays
from examples.lib import classifiers
from examples.lib import console
from examples.lib.training_config import TrainingConfig
from keras_sft import data
from keras_sft.teacher import copy_model

OLD_CLASSES = (0, 1, 2, 3, 4)
NEW_CLASSES = (5, 6, 7, 8, 9)
# Pretraining uses Adam's usual 1e-3; the new head learns faster.
PRETRAIN_EPOCHS = 30
TRAINING = TrainingConfig(epochs=60, learning_rate=1e-2)


def _arrays(split, classes):
    """Digits of `classes` in `split` as arrays, labels counted from 0."""
    dataset = data.select_classes(data.load("digits", split=split)[0], classes)
    images, labels = arrays.to_arrays(dataset)
    return images, labels - min(classes)


def run_new_head(
    *, lambdas, strategy, config=TRAINING, pretrain_epochs=PRETRAIN_EPOCHS
):
    """Runs the experiment and returns one row per model.

    Progress goes to stderr (`console.Progress`).

    Args:
        lambdas: Sequence of floats > 0, the SFT runs beside lambda=0.
        strategy: `tf.distribute.Strategy` to train under.
        config: `TrainingConfig` of each new-head fine-tuning; pretraining
            takes its batch size and seed. Defaults to `TRAINING`.
        pretrain_epochs: Int, epochs of pretraining on the old classes.
            Defaults to `PRETRAIN_EPOCHS`.

    Returns:
        A list of dicts with keys `"model"`, `"lambda"`, `"old"` (the old
        head's accuracy on classes 0-4) and `"new"` (the new head's on
        classes 5-9, `None` before fine-tuning).
    """
    old_x, old_y = _arrays("train[:50%]", OLD_CLASSES)
    new_x, new_y = _arrays("train[50%:]", NEW_CLASSES)
    old_test_x, old_test_y = _arrays("test", OLD_CLASSES)
    new_test_x, new_test_y = _arrays("test", NEW_CLASSES)
    progress = console.Progress(2 + len(lambdas))
    progress.step("new head: pretraining on classes 0-4")
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        pretrained = classifiers.build_classifier(
            "mlp",
            input_shape=old_x.shape[1:],
            num_classes=len(OLD_CLASSES),
            seed=config.seed,
        )
        pretrained.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    pretrained.fit(
        old_x,
        old_y,
        batch_size=config.batch_size,
        epochs=pretrain_epochs,
        verbose=0,
    )
    old_logits = pretrained.predict(old_test_x, verbose=0)
    rows = [
        {
            "model": "pretrained (old head only)",
            "lambda": None,
            "old": accuracy.accuracy(old_logits, old_test_y),
            "new": None,
        }
    ]
    for lambda_ in [0.0, *lambdas]:
        name = "plain fine-tuning" if lambda_ == 0 else "SFT (LwF)"
        progress.step(f"new head: {name}, lambda={lambda_:g}")
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            student = keras_sft.add_head(
                copy_model(pretrained), len(NEW_CLASSES)
            )
            old_head, new_head = student.output_names
            model = keras_sft.SFTModel(
                student,
                lambda_=lambda_,
                distance=config.distance,
                distill_outputs=[old_head],
            )
            model.compile(
                optimizer=keras.optimizers.Adam(config.learning_rate),
                loss={
                    new_head: keras.losses.SparseCategoricalCrossentropy(
                        from_logits=True
                    )
                },
            )
        model.fit(
            new_x,
            {new_head: new_y},
            batch_size=config.batch_size,
            epochs=config.epochs,
            verbose=0,
        )
        rows.append(
            {
                "model": name,
                "lambda": lambda_,
                "old": accuracy.accuracy(
                    student.predict(old_test_x, verbose=0)[0], old_test_y
                ),
                "new": accuracy.accuracy(
                    student.predict(new_test_x, verbose=0)[1], new_test_y
                ),
            }
        )
    return rows


def write_table(rows, output_dir):
    """Writes the rows to `new_head.md` in `output_dir` and prints them on
    stdout."""
    table = markdown_table(rows)
    path = os.path.join(output_dir, "new_head.md")
    with open(path, "w") as file:
        file.write(table)
    console.print_table(
        f"New head, Learning without Forgetting (also in {path}):", table
    )


def markdown_table(rows):
    """The rows as a markdown table, accuracies in percent."""
    lines = [
        "| model | lambda | old head: classes 0-4 | new head: classes 5-9 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        lambda_ = "-" if row["lambda"] is None else f"{row['lambda']:g}"
        new = "-" if row["new"] is None else f"{100 * row['new']:.1f}"
        lines.append(
            f"| {row['model']} | {lambda_} | {100 * row['old']:.1f} | {new} |"
        )
    return "\n".join(lines) + "\n"
