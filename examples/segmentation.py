"""Forgetting in semantic segmentation: plain fine-tuning against SFT.

Pretrains a small fully convolutional network on an old segmentation task,
fine-tunes it on a new one plainly and with SFT for each `--lambdas`, and
logs a table of mean IoU and pixel accuracy on both tasks. The default,
`--dataset=digits`, runs offline in well under a minute on two CPU cores.

    python -m examples.segmentation
    python -m examples.segmentation --dataset=oxford_iiit_pet \
        --data_dir=/data/tfds --image_size=64 --lambdas=0.1,0.3
"""

import keras
from absl import app
from absl import flags
from absl import logging

from examples import segmentation_experiment
from keras_sft import distances
from keras_sft import segmentation_data
from keras_sft import strategy as strategy_lib

DATASET = flags.DEFINE_enum(
    "dataset",
    "digits",
    ("digits", *segmentation_data.TFDS_SETS),
    "'digits' (scikit-learn's digits drawn on a larger canvas, offline; "
    "old task 0-4, new task 5-9) or 'oxford_iiit_pet' (TFDS; old task "
    "cats, new task dogs).",
)
DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TensorFlow Datasets data directory (TFDS sets only)."
)
IMAGE_SIZE = flags.DEFINE_integer(
    "image_size",
    None,
    "Side of the images; 16 for digits and 64 for TFDS sets when unset.",
    lower_bound=8,
)
BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 32, "Global batch size.", lower_bound=1
)
PRETRAIN_EPOCHS = flags.DEFINE_integer(
    "pretrain_epochs", 20, "Epochs on the old task.", lower_bound=1
)
EPOCHS = flags.DEFINE_integer(
    "epochs", 10, "Fine-tuning epochs on the new task.", lower_bound=1
)
LAMBDAS = flags.DEFINE_list(
    "lambdas",
    ["0.03", "0.1", "0.3"],
    "SFT weights of the consistency term (floats > 0), one fine-tuning "
    "each; plain fine-tuning (lambda=0) always runs too.",
)
DISTANCE = flags.DEFINE_enum(
    "distance",
    "mse",
    tuple(distances.DISTANCES),
    "SFT's consistency distance between teacher and student logits.",
)
LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", 3e-3, "Adam's learning rate.", lower_bound=0.0
)
SEED = flags.DEFINE_integer(
    "seed", 0, "Seed of the data, the weights and Keras.", lower_bound=0
)
STRATEGY = flags.DEFINE_enum(
    "strategy",
    "default",
    strategy_lib.STRATEGIES,
    "tf.distribute strategy.",
)
MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision",
    "none",
    ("none", "mixed_float16", "mixed_bfloat16"),
    "Keras dtype policy of the models.",
)
JIT_COMPILE = flags.DEFINE_bool(
    "jit_compile", False, "Compile the training steps with XLA."
)


def _lambdas(values):
    """Parses `--lambdas`, refusing anything but floats > 0."""
    try:
        lambdas = [float(value) for value in values]
    except ValueError:
        lambdas = []
    if not lambdas or not all(value > 0 for value in lambdas):
        raise app.UsageError(
            "Invalid value for flag --lambdas. Expected a comma-separated "
            f"list of floats > 0. Received: --lambdas={','.join(values)}"
        )
    return lambdas


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    lambdas = _lambdas(LAMBDAS.value)
    if MIXED_PRECISION.value != "none":
        keras.config.set_dtype_policy(MIXED_PRECISION.value)
    strategy = strategy_lib.build_strategy(STRATEGY.value)
    if DATASET.value == "digits":
        tasks = segmentation_experiment.digit_tasks(
            image_size=IMAGE_SIZE.value or 16, seed=SEED.value
        )
    else:
        tasks = segmentation_experiment.pet_tasks(
            image_size=IMAGE_SIZE.value or 64, data_dir=DATA_DIR.value
        )
    rows = segmentation_experiment.run_experiment(
        tasks,
        lambdas=lambdas,
        distance=DISTANCE.value,
        batch_size=BATCH_SIZE.value,
        pretrain_epochs=PRETRAIN_EPOCHS.value,
        epochs=EPOCHS.value,
        learning_rate=LEARNING_RATE.value,
        seed=SEED.value,
        strategy=strategy,
        jit_compile=JIT_COMPILE.value,
    )
    logging.info(
        "Segmentation, %s:\n%s",
        DATASET.value,
        segmentation_experiment.format_table(rows),
    )


if __name__ == "__main__":
    app.run(main)
