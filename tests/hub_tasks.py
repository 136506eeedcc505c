"""Tiny random-init keras-hub tasks shared by the tests (offline).

Without dropout, so that a training step's logged losses can be computed
a second way from the task's outputs.
"""

import keras_hub


def gpt2_causal_lm():
    """A GPT-2 causal LM with a byte-pair vocabulary of 8 tokens."""
    tokens = ["<|endoftext|>", "a", "b", "Ġ", "Ġa", "Ġb", "ab", "Ġab"]
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary={token: i for i, token in enumerate(tokens)},
        merges=["a b", "Ġ a", "Ġ b", "Ġa b"],
    )
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(tokens),
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
        dropout=0.0,
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=8
    )
    return keras_hub.models.GPT2CausalLM(
        backbone=backbone, preprocessor=preprocessor
    )


def bert_text_classifier():
    """A one-layer BERT classifier of 3 classes, with its preprocessor."""
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + ["the", "quick", "brown", "fox", "jumps"]
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=10,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=12,
        dropout=0.0,
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=12
    )
    return keras_hub.models.BertTextClassifier(
        backbone=backbone,
        num_classes=3,
        preprocessor=preprocessor,
        dropout=0.0,
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
