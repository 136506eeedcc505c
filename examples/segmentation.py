"""Forgetting in semantic segmentation: plain fine-tuning against SFT.

Pretrains a small fully convolutional network on an old segmentation task,
fine-tunes it on a new one plainly and with SFT for each `--lambdas`, and
logs a table of mean IoU and pixel accuracy on both tasks. The default,
`--dataset=digits`, runs offline in well under a minute on two CPU cores;
the defaults are `examples.lib.presets.SEGMENTATION`.

    python -m examples.segmentation
    python -m examples.segmentation --dataset=oxford_iiit_pet \
        --data_dir=/data/tfds --image_size=64 --lambdas=0.1,0.3
"""

from absl import flags
from absl import logging

from examples import common_flags
from examples import experiment_flags
from examples.lib import presets
from examples.lib import segmentation_data
from examples.lib import segmentation_experiment

DATASETS = ("digits", *segmentation_data.TFDS_SETS)

IMAGE_SIZE = flags.DEFINE_integer(
    "image_size",
    None,
    "Side of the images; 16 for digits and 64 for TFDS sets when unset.",
    lower_bound=8,
)
for _flag in (*common_flags.CORE_FLAGS, common_flags.DATA_DIR):
    flags.declare_key_flag(_flag.name)
flags.adopt_module_key_flags(experiment_flags)


def main(argv):
    common_flags.refuse_arguments(argv)
    dataset = common_flags.DATASET.value
    if dataset not in DATASETS:
        raise ValueError(
            f"Invalid value for flag --dataset. Expected one of {DATASETS} "
            f"(old task 0-4 and new task 5-9 of digit scenes, or cats and "
            f"dogs). Received: --dataset={dataset}"
        )
    strategy = common_flags.set_up()
    if dataset == "digits":
        tasks = segmentation_experiment.digit_tasks(
            image_size=IMAGE_SIZE.value or 16, seed=common_flags.SEED.value
        )
    else:
        tasks = segmentation_experiment.pet_tasks(
            image_size=IMAGE_SIZE.value or 64,
            data_dir=common_flags.DATA_DIR.value,
        )
    rows = segmentation_experiment.run_experiment(
        tasks,
        lambdas=common_flags.positive_floats(experiment_flags.LAMBDAS.value),
        pretrain_epochs=experiment_flags.PRETRAIN_EPOCHS.value,
        config=common_flags.training_config(),
        distance=common_flags.DISTANCE.value,
        strategy=strategy,
    )
    logging.info(
        "Segmentation, %s:\n%s",
        dataset,
        segmentation_experiment.format_table(rows),
    )


if __name__ == "__main__":
    common_flags.run(main, preset=presets.SEGMENTATION)
