r"""Fine-tunes a pretrained `.keras` classifier with `keras_sft.SFTModel`.

    python -m examples.finetune --pretrained=runs/pretrained.keras \
        --lambda=0.03 --classes=0-4 --shift=invert \
        --output=runs/finetuned.keras --export_dir=runs/serving
"""

from absl import flags

from examples import common_flags
from examples import finetune_flags
from examples.lib import training

BACKUP_DIR = flags.DEFINE_string(
    "backup_dir",
    None,
    "keras_sft.BackupAndRestore directory that a rerun resumes from; none "
    "when unset. Under --strategy=multi_worker, on storage every worker "
    "reads (the chief writes it).",
)
BACKUP_FREQ = flags.DEFINE_string(
    "backup_freq",
    "epoch",
    "With --backup_dir: 'epoch' (a backup at the end of each epoch) or an "
    "int N > 0 (a backup every N steps). A rerun resumes at the epoch of "
    "the last backup; from an epoch's end it ends with the weights of an "
    "uninterrupted run, from within an epoch it runs that epoch again from "
    "its first step, with the backup's weights.",
)
flags.register_validator(
    BACKUP_FREQ,
    lambda value: value == "epoch" or (value.isdigit() and int(value) > 0),
    message="--backup_freq must be 'epoch' or an int > 0",
)
CACHE_TEACHER = flags.DEFINE_bool(
    "cache_teacher",
    False,
    "Compute the teacher's outputs on the (deterministic) training data "
    "once, before training (keras_sft.cache_teacher_outputs).",
)
CACHE_DIR = flags.DEFINE_string(
    "cache_dir", None, "With --cache_teacher, a directory for an on-disk cache."
)
ANCHOR_SPLIT = flags.DEFINE_string(
    "anchor_split",
    None,
    "Split of --dataset, as it is, to draw --anchor_count unlabeled inputs "
    "from for the consistency term (SFTModel.fit's anchor_x); none if unset.",
)
ANCHOR_MODE = flags.DEFINE_enum(
    "anchor_mode",
    "replace",
    ["replace", "both"],
    "With --anchor_split: the consistency term on the anchors alone "
    "('replace') or the mean of the terms on both inputs ('both').",
)
common_flags.refuse_existing(finetune_flags.EXPORT_DIR)
flags.adopt_module_key_flags(common_flags)
flags.adopt_module_key_flags(finetune_flags)
# A backup is resumed only by a run with the same pretrained file and flags:
TRAINING_FLAGS = (*common_flags.TRAINING_FLAGS, "lambda", "cache_teacher")
TRAINING_FLAGS += ("distance", "anchor_split", "anchor_mode", "anchor_count")


def main(argv):
    common_flags.refuse_arguments(argv)
    with common_flags.claimed_outputs(
        files=[common_flags.OUTPUT],
        directories=[finetune_flags.EXPORT_DIR],
        backup_dir=BACKUP_DIR,
        training_flags=TRAINING_FLAGS,
        written=[CACHE_DIR],
    ):
        strategy = common_flags.set_up()
        train, test, _ = common_flags.load_train_and_test()
        training.finetune_splits(
            pretrained=common_flags.PRETRAINED.value,
            train=train,
            test=test,
            dataset=common_flags.DATASET.value,
            cache=CACHE_TEACHER.value,
            cache_dir=CACHE_DIR.value,
            lambda_=finetune_flags.LAMBDA.value,
            output=common_flags.OUTPUT.value,
            strategy=strategy,
            config=common_flags.training_config(
                backup_dir=BACKUP_DIR.value, backup_freq=_backup_freq()
            ),
            export_dir=finetune_flags.EXPORT_DIR.value,
            overwrite=common_flags.OVERWRITE.value,
            anchor_x=common_flags.sample_unshifted(ANCHOR_SPLIT.value),
            anchor_mode=ANCHOR_MODE.value,
            retained=common_flags.load_retained(),
        )


def _backup_freq():
    """`--backup_freq` as `keras_sft.BackupAndRestore`'s `save_freq`."""
    value = BACKUP_FREQ.value
    return value if value == "epoch" else int(value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["pretrained", "output"])
    common_flags.run(main)
