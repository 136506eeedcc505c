r"""Fine-tunes a pretrained `.keras` classifier with `keras_sft.SFTModel`.

    python -m examples.finetune --pretrained=runs/pretrained.keras \
        --lambda=0.03 --classes=0-4 --shift=invert \
        --output=runs/finetuned.keras --export_dir=runs/serving

`--lambda=0` is plain fine-tuning. The student is validated on `--test_split`,
then written to `--output` and, with `--export_dir`, exported as a SavedModel
that takes raw pixels; each file is whole or not written. `--backup_dir`
resumes an interrupted run (only the same run), `--cache_teacher` computes
the teacher's outputs once, `--anchor_split` computes the consistency term
on unlabeled inputs of another split. Every flag: examples/README.md.
"""

import math

from absl import flags
from absl import logging

from examples import common_flags
from examples.lib import training
from keras_sft import data

LAMBDA = flags.DEFINE_float(
    "lambda",
    0.03,
    "Weight of the teacher-consistency term (>= 0); 0 is plain fine-tuning.",
    lower_bound=0.0,
)
BACKUP_DIR = flags.DEFINE_string(
    "backup_dir",
    None,
    "Directory of the keras.callbacks.BackupAndRestore backup; a rerun "
    "resumes from it after a crash. No backup when unset.",
)
EXPORT_DIR = flags.DEFINE_string(
    "export_dir",
    None,
    "Directory to export the student to as a TensorFlow SavedModel (an "
    "existing one is replaced only with --overwrite); no export when unset.",
)
CACHE_TEACHER = flags.DEFINE_bool(
    "cache_teacher",
    False,
    "Compute the teacher's outputs on the training data once, before "
    "training, and store them with the examples "
    "(keras_sft.cache_teacher_outputs), so each epoch runs the student "
    "alone. Same weights as the live teacher; the data must be "
    "deterministic (no random augmentation).",
)
CACHE_DIR = flags.DEFINE_string(
    "cache_dir",
    None,
    "With --cache_teacher, a directory to keep the cache on disk (for "
    "sets larger than memory); in memory when unset.",
)
ANCHOR_SPLIT = flags.DEFINE_string(
    "anchor_split",
    None,
    "Split of --dataset (TFDS syntax, without --classes or --shift: the "
    "pretraining distribution) to draw --anchor_count unlabeled inputs "
    "from; the consistency term is then computed on them "
    "(SFTModel.fit(anchor_x=...)). None when unset.",
)
ANCHOR_MODE = flags.DEFINE_enum(
    "anchor_mode",
    "replace",
    ["replace", "both"],
    "With --anchor_split: the consistency term on the anchors alone "
    "('replace') or the mean of the terms on the new inputs and on the "
    "anchors ('both').",
)
flags.register_validator(
    LAMBDA,
    math.isfinite,
    message="--lambda must be a finite number >= 0",
)
common_flags.refuse_existing(EXPORT_DIR)
flags.adopt_module_key_flags(common_flags)


# The flags that change what training computes: a backup made by a run
# that differs in one of them (or in the pretrained file) is not resumed.
TRAINING_FLAGS = common_flags.TRAINING_FLAGS + (
    "lambda",
    "cache_teacher",
    "distance",
    "anchor_split",
    "anchor_mode",
    "anchor_count",
)


def main(argv):
    common_flags.refuse_arguments(argv)
    with common_flags.claimed_outputs(
        files=[common_flags.OUTPUT],
        directories=[EXPORT_DIR],
        backup_dir=BACKUP_DIR,
        training_flags=TRAINING_FLAGS,
        written=[CACHE_DIR],
    ):
        train()


def train():
    """Fine-tunes, saves and exports as the flags say."""
    strategy = common_flags.set_up()
    train, test, _ = common_flags.load_train_and_test()
    if CACHE_TEACHER.value:
        train = training.cache_teacher(
            common_flags.PRETRAINED.value,
            train,
            strategy=strategy,
            directory=CACHE_DIR.value,
        )
    train, epoch_shuffle = common_flags.training_batches(train)
    anchor_x = None
    if ANCHOR_SPLIT.value:
        anchor_x = common_flags.sample_unshifted(ANCHOR_SPLIT.value)
    model = training.finetune(
        pretrained=common_flags.PRETRAINED.value,
        train=train,
        validation=common_flags.evaluation_batches(test),
        lambda_=LAMBDA.value,
        output=common_flags.OUTPUT.value,
        strategy=strategy,
        config=common_flags.training_config(backup_dir=BACKUP_DIR.value),
        export_dir=EXPORT_DIR.value,
        # The export scales as `data.load` does: clients send raw pixels.
        export_preprocessing=data.rescaling(common_flags.DATASET.value),
        overwrite=common_flags.OVERWRITE.value,
        anchor_x=anchor_x,
        anchor_mode=ANCHOR_MODE.value,
        callbacks=[epoch_shuffle],
    )
    logging.info(
        "Fine-tuned with lambda=%g; student saved to %s",
        model.lambda_,
        common_flags.OUTPUT.value,
    )
    if EXPORT_DIR.value:
        logging.info(
            "SavedModel exported to %s (it takes raw pixels, 0..%g)",
            EXPORT_DIR.value,
            data.max_intensity(common_flags.DATASET.value),
        )


if __name__ == "__main__":
    flags.mark_flags_as_required(
        [common_flags.PRETRAINED.name, common_flags.OUTPUT.name]
    )
    common_flags.run(main)
