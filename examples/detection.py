"""Forgetting in object detection: plain fine-tuning, SFT and L2-SP.

Pretrains a small grid detector (a class head and a box head) on scenes
of digits with their boxes, fine-tunes it on the negatives of such scenes
plainly, with SFT on both heads for each `--lambdas` (the consistency term
on the new scenes) and each `--anchor_lambdas` (on `--anchor_count`
unlabeled old scenes instead), and with L2-SP for each `--l2_sp_alphas`,
and prints a table of mAP at IoU 0.5 on held-out scenes of both domains.
Offline; the defaults are `examples.lib.presets.DETECTION`.

    python -m examples.detection
    python -m examples.detection --lambdas=0.3 --l2_sp_alphas=0.1,1
"""

from absl import flags

from benchmarks.experiments import detection_experiment
from examples import common_flags
from examples import experiment_flags
from examples.lib import console
from examples.lib import presets

flags.register_validator(
    experiment_flags.IMAGE_SIZE,
    lambda size: size is None or (size >= 16 and size % 8 == 0),
    message="--image_size must be a multiple of 8, at least 16",
)
SCENES = flags.DEFINE_integer(
    "scenes",
    2000,
    "Training scenes per domain (a quarter as many test scenes).",
    lower_bound=4,
)
for _flag in (
    *common_flags.CORE_FLAGS,
    common_flags.ANCHOR_COUNT,
    *experiment_flags.COMPARISON_FLAGS,
    experiment_flags.IMAGE_SIZE,
):
    flags.declare_key_flag(_flag.name)


def main(argv):
    common_flags.refuse_arguments(argv)
    if common_flags.DATASET.value != "digits":
        raise ValueError(
            "Invalid value for flag --dataset. Expected 'digits' (scenes of "
            "scikit-learn's digits with their boxes). Received: "
            f"--dataset={common_flags.DATASET.value}"
        )
    strategy = common_flags.set_up()
    tasks = detection_experiment.digit_tasks(
        train_count=SCENES.value,
        test_count=max(SCENES.value // 4, 1),
        image_size=experiment_flags.IMAGE_SIZE.value,
        seed=common_flags.SEED.value,
    )
    rows = detection_experiment.run_experiment(
        tasks,
        lambdas=common_flags.positive_floats(experiment_flags.LAMBDAS.value),
        anchor_lambdas=common_flags.positive_floats(
            experiment_flags.ANCHOR_LAMBDAS.value
        ),
        alphas=common_flags.positive_floats(
            experiment_flags.L2_SP_ALPHAS.value
        ),
        anchor_count=common_flags.ANCHOR_COUNT.value,
        pretrain_epochs=experiment_flags.PRETRAIN_EPOCHS.value,
        config=common_flags.training_config(),
        strategy=strategy,
    )
    console.print_table(
        "Detection, digit scenes to their negatives:",
        detection_experiment.format_table(rows),
    )


if __name__ == "__main__":
    common_flags.run(main, preset=presets.DETECTION)
