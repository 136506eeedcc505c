"""Flags of the experiment binaries, `examples.demo` and
`examples.segmentation`: each compares plain fine-tuning with SFT, L2-SP
and SFT on anchors.

Their defaults are the demo's; `examples.lib.presets` holds each binary's.
"""

from absl import flags

from examples import common_flags

LAMBDAS = flags.DEFINE_list(
    "lambdas",
    ["0.01", "0.03", "0.1", "0.3", "1"],
    "SFT weights of the consistency term (floats >= 0), one fine-tuning "
    "each; plain fine-tuning (lambda=0) always runs too.",
)
PRETRAIN_EPOCHS = flags.DEFINE_integer(
    "pretrain_epochs",
    30,
    "Epochs of pretraining (--epochs is for each fine-tuning).",
    lower_bound=1,
)

L2_SP_ALPHAS = flags.DEFINE_list(
    "l2_sp_alphas",
    ["0.001", "0.01", "0.1"],
    "Strengths of L2-SP (weight-space regularisation towards the "
    "pretrained weights) to compare with SFT, one run each.",
)
ANCHOR_LAMBDAS = flags.DEFINE_list(
    "anchor_lambdas",
    ["0.03", "0.3", "1"],
    "SFT weights of the runs with the consistency term on --anchor_count "
    "unlabeled inputs of the pretraining split instead of on the new "
    "inputs, one run each; none when empty.",
)
for _flag in (L2_SP_ALPHAS, ANCHOR_LAMBDAS):
    flags.register_validator(
        _flag,
        common_flags.nonnegative_floats,
        message=f"--{_flag.name} must be floats >= 0",
    )


def _valid_lambdas(values):
    """Flag validator: `values` are floats >= 0, one message for all."""
    if common_flags.nonnegative_floats(values):
        return True
    raise flags.ValidationError(
        "--lambdas must be floats >= 0. Expected a comma-separated list of "
        "floats > 0 or 0 (plain fine-tuning, which runs anyway). "
        f"Received: --lambdas={','.join(values)}"
    )


flags.register_validator(LAMBDAS, _valid_lambdas)
