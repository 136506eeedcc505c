r"""Trains a classifier and saves it as a `.keras` file.

    python -m examples.pretrain --model=mlp --output=runs/pretrained.keras

The model is validated on `--test_split` and saved to `--output` after
training, whole or not at all; `--checkpoint_dir` gets a copy after each
epoch (`ModelCheckpoint`) and `--log_dir` TensorBoard logs.
"""

from absl import flags
from absl import logging

from examples import common_flags
from examples.lib import classifiers
from examples.lib import training

MODEL = flags.DEFINE_enum(
    "model",
    "mlp",
    classifiers.MODELS,
    "Classifier: 'mlp' (one hidden layer of 128 units) or 'cnn' (two 3x3 "
    "convolutions and global average pooling).",
)
flags.adopt_module_key_flags(common_flags)


def main(argv):
    common_flags.refuse_arguments(argv)
    with common_flags.claimed_outputs(files=[common_flags.OUTPUT]):
        train()


def train():
    """Trains and saves the classifier as the flags say."""
    strategy = common_flags.set_up()
    train, test, num_classes = common_flags.load_train_and_test()
    input_shape = tuple(train.element_spec[0].shape)
    train, epoch_shuffle = common_flags.training_batches(train)
    model = training.pretrain(
        model_name=MODEL.value,
        train=train,
        validation=common_flags.evaluation_batches(test),
        input_shape=input_shape,
        num_classes=num_classes,
        output=common_flags.OUTPUT.value,
        strategy=strategy,
        config=common_flags.training_config(),
        callbacks=[epoch_shuffle],
    )
    logging.info(
        "Saved %s (%d parameters) to %s",
        MODEL.value,
        model.count_params(),
        common_flags.OUTPUT.value,
    )


if __name__ == "__main__":
    flags.mark_flag_as_required(common_flags.OUTPUT.name)
    common_flags.run(main)
