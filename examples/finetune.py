r"""Fine-tunes a pretrained `.keras` classifier with `keras_sft.SFTModel`.

    python -m examples.finetune --pretrained=runs/pretrained.keras \
        --lambda=0.03 --classes=0-4 --shift=invert \
        --output=runs/finetuned.keras --export_dir=runs/serving

The teacher is a frozen clone of the pretrained model; `--lambda=0` is
plain fine-tuning. The fine-tuned student is validated on `--test_split`
(with the same `--classes` and `--shift`) and written to `--output` after
each epoch (`ModelCheckpoint`); with `--export_dir` it is exported as a
SavedModel after training, and with `--backup_dir` training resumes from
the last finished epoch after a crash (`BackupAndRestore`).
"""

import os

from absl import app
from absl import flags
from absl import logging

from examples import common_flags
from examples import experiment

PRETRAINED = flags.DEFINE_string(
    "pretrained", None, "The pretrained .keras classifier (logits output)."
)
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
    "Directory (must not exist) to export the student to as a TensorFlow "
    "SavedModel; no export when unset.",
)
flags.register_validator(
    PRETRAINED,
    lambda path: path is None or os.path.isfile(path),
    message="--pretrained must be an existing .keras file",
)
flags.register_validator(
    EXPORT_DIR,
    lambda path: path is None or not os.path.exists(path),
    message="--export_dir must not exist yet",
)
flags.adopt_module_key_flags(common_flags)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    strategy = common_flags.set_up()
    train, _ = common_flags.load_split(common_flags.TRAIN_SPLIT.value)
    test, _ = common_flags.load_split(common_flags.TEST_SPLIT.value)
    experiment.ensure_parent(common_flags.OUTPUT.value)
    model = experiment.finetune(
        pretrained=PRETRAINED.value,
        train=common_flags.batched(train, shuffle=True),
        validation=common_flags.batched(test, shuffle=False),
        lambda_=LAMBDA.value,
        output=common_flags.OUTPUT.value,
        strategy=strategy,
        epochs=common_flags.EPOCHS.value,
        learning_rate=common_flags.LEARNING_RATE.value,
        seed=common_flags.SEED.value,
        backup_dir=BACKUP_DIR.value,
        export_dir=EXPORT_DIR.value,
        log_dir=flags.FLAGS.log_dir or None,
        jit_compile=common_flags.JIT_COMPILE.value,
    )
    logging.info(
        "Fine-tuned with lambda=%g; student saved to %s",
        model.lambda_,
        common_flags.OUTPUT.value,
    )
    if EXPORT_DIR.value:
        logging.info("SavedModel exported to %s", EXPORT_DIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required([PRETRAINED.name, common_flags.OUTPUT.name])
    app.run(main)
