r"""Fine-tunes a keras-hub task with `keras_sft.SFTModel`.

    python -m examples.finetune_hub --preset=presets/gpt2_tiny \
        --task=causal_lm --train_file=data/texts.txt \
        --output_preset=runs/gpt2_sft --export_dir=runs/gpt2_serving

`--preset` is a preset directory written by `save_to_preset` (or a hub
handle where the network allows). A causal LM reads one text per line of
`--train_file`; a classifier reads `label<TAB>text` lines. The task's own
preprocessor is applied, as in its `fit`. Needs `pip install -e .[hub]`.
"""

from absl import flags
from absl import logging

from examples import common_flags
from examples import finetune_flags
from examples.lib import hub_finetuning
from examples.lib import presets

PRESET = flags.DEFINE_string(
    "preset", None, "The keras-hub preset to fine-tune (a directory)."
)
TASK = flags.DEFINE_enum(
    "task",
    "causal_lm",
    hub_finetuning.TASKS,
    "The kind of task the preset holds.",
)
TRAIN_FILE = flags.DEFINE_string(
    "train_file", None, "Training texts, one sample per line."
)
OUTPUT_PRESET = flags.DEFINE_string(
    "output_preset",
    None,
    "Directory the fine-tuned task is saved to with save_to_preset.",
)
RETAINED_FILE = flags.DEFINE_string(
    "retained_file",
    None,
    "With --task=text_classifier: label<TAB>text lines of the task the "
    "classifier knew; each epoch's logs then carry retained_accuracy and "
    "teacher_agreement on them (keras_sft.ForgettingMonitor).",
)
flags.register_multi_flags_validator(
    [RETAINED_FILE, TASK],
    lambda values: (
        values["retained_file"] is None or values["task"] == "text_classifier"
    ),
    message="--retained_file needs --task=text_classifier",
)
flags.adopt_module_key_flags(common_flags)
flags.adopt_module_key_flags(finetune_flags)


def main(argv):
    common_flags.refuse_arguments(argv)
    hub_finetuning.finetune_hub(
        PRESET.value,
        TRAIN_FILE.value,
        task=TASK.value,
        output_preset=OUTPUT_PRESET.value,
        export_dir=finetune_flags.EXPORT_DIR.value,
        lambda_=finetune_flags.LAMBDA.value,
        distance=common_flags.DISTANCE.value,
        batch_size=common_flags.BATCH_SIZE.value,
        epochs=common_flags.EPOCHS.value,
        learning_rate=common_flags.LEARNING_RATE.value,
        seed=common_flags.SEED.value,
        retained_file=RETAINED_FILE.value,
    )
    logging.info("Fine-tuned task saved to %s", OUTPUT_PRESET.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(
        [PRESET.name, TRAIN_FILE.name, OUTPUT_PRESET.name]
    )
    common_flags.run(main, preset=presets.HUB)
