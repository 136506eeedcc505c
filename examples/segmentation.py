"""Forgetting in semantic segmentation: plain fine-tuning against SFT.

Pretrains a small fully convolutional network on an old segmentation task,
fine-tunes it on a new one plainly, with SFT for each `--lambdas`, with
L2-SP for each `--l2_sp_alphas` and with SFT on `--anchor_count` anchors
(unlabeled pretraining scenes) for each `--anchor_lambdas`, and prints a
table of mean IoU and pixel accuracy on both tasks. `--dataset=digits`
runs offline in a few minutes on two CPU cores, in the `--scenario` given;
the defaults are `examples.lib.presets.SEGMENTATION`.

    python -m examples.segmentation
    python -m examples.segmentation --scenario=new_head --distance=kl
    python -m examples.segmentation --dataset=oxford_iiit_pet \
        --data_dir=/data/tfds --image_size=64 --lambdas=0.1,0.3
"""

from absl import flags

from benchmarks.experiments import segmentation_experiment
from examples import common_flags
from examples import experiment_flags
from examples.lib import console
from examples.lib import presets

SCENARIO = flags.DEFINE_enum(
    "scenario",
    "shared_head",
    segmentation_experiment.SCENARIOS,
    "With --dataset=digits: 'shared_head' (digits 5-9 after 0-4, in the "
    "pretrained head), 'new_head' (5-9 in a new head, the consistency term "
    "on the old head alone) or 'new_domain' (0-4 again, on inverted "
    "scenes).",
)
for _flag in (
    *common_flags.CORE_FLAGS,
    common_flags.DATA_DIR,
    common_flags.ANCHOR_COUNT,
    common_flags.DISTANCE,
    *experiment_flags.COMPARISON_FLAGS,
    experiment_flags.IMAGE_SIZE,
):
    flags.declare_key_flag(_flag.name)


def main(argv):
    common_flags.refuse_arguments(argv)
    strategy = common_flags.set_up()
    tasks = segmentation_experiment.tasks(
        common_flags.DATASET.value,
        scenario=SCENARIO.value,
        image_size=experiment_flags.IMAGE_SIZE.value,
        seed=common_flags.SEED.value,
        data_dir=common_flags.DATA_DIR.value,
    )
    rows = segmentation_experiment.run_experiment(
        tasks,
        lambdas=common_flags.positive_floats(experiment_flags.LAMBDAS.value),
        pretrain_epochs=experiment_flags.PRETRAIN_EPOCHS.value,
        config=common_flags.training_config(),
        distance=common_flags.DISTANCE.value,
        strategy=strategy,
        l2_sp_alphas=[
            float(value) for value in experiment_flags.L2_SP_ALPHAS.value
        ],
        anchor_lambdas=common_flags.positive_floats(
            experiment_flags.ANCHOR_LAMBDAS.value
        ),
        anchor_count=common_flags.ANCHOR_COUNT.value,
    )
    console.print_table(
        f"Segmentation, {common_flags.DATASET.value}, {SCENARIO.value}:",
        segmentation_experiment.format_table(rows),
    )


if __name__ == "__main__":
    common_flags.run(main, preset=presets.SEGMENTATION)
