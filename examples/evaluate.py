r"""Prints the accuracy of a saved classifier, overall and per class group.

    python -m examples.evaluate --model_path=runs/finetuned.keras \
        --groups=0-4,5-9

Evaluates on `--test_split` of `--dataset` (restricted to `--classes` and
moved by `--shift`, when given). A `.keras` file of a `keras_sft.SFTModel`
is evaluated through its student.
"""

from absl import flags

import keras_sft  # noqa: F401  (registers SFTModel for loading)
from examples import common_flags
from examples.lib import accuracy
from examples.lib import classifiers
from examples.lib import console

MODEL_PATH = flags.DEFINE_string(
    "model_path", None, "The .keras classifier to evaluate (logits output)."
)
GROUPS = flags.DEFINE_list(
    "groups",
    [],
    "Class groups to report accuracy on, each a label or a range "
    "('0-4,5-9' gives two groups); only the overall accuracy when empty.",
)
flags.register_validator(
    MODEL_PATH,
    common_flags.unset_or_file,
    message="--model_path must be an existing .keras file",
)
flags.register_validator(GROUPS, common_flags.valid_classes)
flags.adopt_module_key_flags(common_flags)


def evaluate():
    """Returns the accuracies the flags ask for and prints them on
    stdout."""
    strategy = common_flags.set_up()
    test = common_flags.load_test_split()
    with strategy.scope():
        model = classifiers.load_classifier(MODEL_PATH.value)
    accuracies = accuracy.accuracy_by_group(
        model,
        common_flags.evaluation_batches(test),
        groups=[common_flags.parse_classes([g]) for g in GROUPS.value],
    )
    console.print_result(
        "\n".join(
            f"accuracy {name}: {value:.4f}"
            for name, value in accuracies.items()
        )
    )
    return accuracies


def main(argv):
    common_flags.refuse_arguments(argv)
    evaluate()


if __name__ == "__main__":
    flags.mark_flag_as_required(MODEL_PATH.name)
    common_flags.run(main)
