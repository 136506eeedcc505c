r"""The forgetting experiment: plain fine-tuning against SFT, offline.

    python -m examples.demo              # or: make demo

Pretrains an MLP on the first half of `--dataset`'s train split (all
classes), fine-tunes it on the second half restricted to `--classes` and
moved by `--shift`, plainly and once per `--lambdas` value with SFT (and
once per `--l2_sp_alphas` value with L2-SP, and once per `--anchor_lambdas`
value with SFT on `--anchor_count` anchors: unlabeled images of the
pretraining split, as they were), and scores each model on the
uncovered classes as they were (retained) and on the covered classes in
the new domain (new). Then, unless `--new_head_lambdas` is empty, the
new-head experiment (Learning without Forgetting: pretrain on 0-4, learn
5-9 as a new head). Writes `results.md`, `forgetting.png` and
`new_head.md` to `--output_dir`, beside the models. The defaults are
`examples.lib.presets.DEMO`; `--train_split` and `--test_split` are unused.
"""

import dataclasses

from absl import flags

from benchmarks.experiments import forgetting_experiment
from benchmarks.experiments import new_head_experiment
from examples import common_flags
from examples import experiment_flags
from examples.lib import presets

NEW_HEAD_LAMBDAS = flags.DEFINE_list(
    "new_head_lambdas",
    ["0.1", "1"],
    "SFT weights of the new-head experiment (Learning without Forgetting), "
    "beside lambda=0; none runs it not.",
)
flags.register_validator(
    NEW_HEAD_LAMBDAS,
    common_flags.nonnegative_floats,
    message="--new_head_lambdas must be floats >= 0",
)
flags.adopt_module_key_flags(common_flags)
for _flag in (*experiment_flags.COMPARISON_FLAGS, experiment_flags.OUTPUT_DIR):
    flags.declare_key_flag(_flag.name)


def main(argv):
    common_flags.refuse_arguments(argv)
    strategy = common_flags.set_up()
    forgetting_experiment.run_demo(
        output_dir=experiment_flags.OUTPUT_DIR.value,
        lambdas=common_flags.positive_floats(experiment_flags.LAMBDAS.value),
        classes=common_flags.parse_classes(common_flags.CLASSES.value),
        shift=common_flags.SHIFT.value,
        strategy=strategy,
        config=common_flags.training_config(log_dir=None, checkpoint_dir=None),
        pretrain_epochs=experiment_flags.PRETRAIN_EPOCHS.value,
        l2_sp_alphas=[
            float(value) for value in experiment_flags.L2_SP_ALPHAS.value
        ],
        anchor_lambdas=common_flags.positive_floats(
            experiment_flags.ANCHOR_LAMBDAS.value
        ),
        anchor_count=common_flags.ANCHOR_COUNT.value,
        dataset=common_flags.DATASET.value,
        data_dir=common_flags.DATA_DIR.value,
    )
    if NEW_HEAD_LAMBDAS.value:
        rows = new_head_experiment.run_new_head(
            lambdas=common_flags.positive_floats(NEW_HEAD_LAMBDAS.value),
            strategy=strategy,
            config=dataclasses.replace(
                new_head_experiment.TRAINING, seed=common_flags.SEED.value
            ),
        )
        new_head_experiment.write_table(rows, experiment_flags.OUTPUT_DIR.value)


if __name__ == "__main__":
    common_flags.run(main, preset=presets.DEMO)
