"""Tiny random-init keras-hub tasks of a few words (offline), for the
workflows and, with their own sizes, for the tests (tests/hub_tasks.py).
"""

import keras_hub


def _dropout(dropout):
    # Left out, the task's and backbone's own defaults hold.
    return {} if dropout is None else {"dropout": dropout}


def bert_text_classifier(words, *, sequence_length, dropout=None):
    """A one-layer BERT classifier of 3 classes over `words`, with its
    preprocessor."""
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(words)
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=5 + len(words),
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=sequence_length,
        **_dropout(dropout),
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=sequence_length
    )
    return keras_hub.models.BertTextClassifier(
        backbone=backbone,
        num_classes=3,
        preprocessor=preprocessor,
        **_dropout(dropout),
    )


def gpt2_causal_lm(*, num_layers, dropout=None):
    """A GPT-2 causal LM with a byte-pair vocabulary of 8 tokens."""
    tokens = ["<|endoftext|>", "a", "b", "Ġ", "Ġa", "Ġb", "ab", "Ġab"]
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary={token: i for i, token in enumerate(tokens)},
        merges=["a b", "Ġ a", "Ġ b", "Ġa b"],
    )
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(tokens),
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
        **_dropout(dropout),
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=8
    )
    return keras_hub.models.GPT2CausalLM(
        backbone=backbone, preprocessor=preprocessor
    )
