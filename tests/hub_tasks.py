"""Tiny random-init keras-hub tasks shared by the tests (offline).

Without dropout, so that a training step's logged losses can be computed
a second way from the task's outputs.
"""

import keras_hub
import numpy as np

from benchmarks import _hub_tasks


def gpt2_causal_lm():
    """A GPT-2 causal LM with a byte-pair vocabulary of 8 tokens."""
    return _hub_tasks.gpt2_causal_lm(num_layers=2, dropout=0.0)


def bert_text_classifier():
    """A one-layer BERT classifier of 3 classes, with its preprocessor."""
    words = ["the", "quick", "brown", "fox", "jumps"]
    return _hub_tasks.bert_text_classifier(
        words, sequence_length=12, dropout=0.0
    )


def resnet_image_classifier():
    """A one-block ResNet classifier of 3 classes on 16x16 RGB images."""
    backbone = keras_hub.models.ResNetBackbone(
        # ResNetBackbone requires 64 filters in its first stack.
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        image_shape=(16, 16, 3),
    )
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(
        image_converter=keras_hub.layers.ResNetImageConverter(
            image_size=(16, 16), scale=1 / 255.0
        )
    )
    return keras_hub.models.ResNetImageClassifier(
        backbone=backbone,
        num_classes=3,
        preprocessor=preprocessor,
        dropout=0.0,
    )


def retinanet_object_detector():
    """A RetinaNet of 2 classes on 64x64 RGB images, boxes in `"xyxy"`
    pixels: a three-stack ResNet under a feature pyramid of levels 3 and 4
    (720 anchors), one convolution in each head."""
    image_encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 8, 8],
        stackwise_num_blocks=[1, 1, 1],
        stackwise_num_strides=[1, 2, 2],
        block_type="basic_block",
        image_shape=(64, 64, 3),
    )
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=image_encoder,
        min_level=3,
        max_level=4,
        use_p5=False,
        image_shape=(64, 64, 3),
    )
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone,
        num_classes=2,
        bounding_box_format="xyxy",
        pre_logits_num_conv_layers=1,
    )


def scenes_with_boxes(count, seed=0):
    """64x64 black images with one or two rectangles, each filled in the
    colour channel of its class (0 or 1), with their `"xyxy"` boxes and
    labels, padded to two per image with -1 as keras-hub pads them."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 64, 64, 3), "float32")
    boxes = np.full((count, 2, 4), -1.0, "float32")
    labels = np.full((count, 2), -1, "int32")
    for image in range(count):
        for box in range(rng.integers(1, 3)):
            # Sized like the anchors of level 3 (32 pixels), so that each
            # matches some.
            width, height = rng.integers(20, 36, size=2)
            left = rng.integers(0, 64 - width)
            top = rng.integers(0, 64 - height)
            label = rng.integers(0, 2)
            images[image, top : top + height, left : left + width, label] = 1
            boxes[image, box] = [left, top, left + width, top + height]
            labels[image, box] = label
    return images, {"boxes": boxes, "labels": labels}
