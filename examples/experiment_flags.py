"""Flags of the experiment binaries, `examples.demo`,
`examples.segmentation`, `examples.detection` and
`examples.forgetting_benchmark`: each compares plain fine-tuning with SFT,
L2-SP and SFT on anchors. Each binary declares the ones it reads.

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
OUTPUT_DIR = flags.DEFINE_string(
    "output_dir",
    "runs/demo",
    "Directory of the results: the demo's models, results.md and "
    "forgetting.png; the forgetting benchmark's tables, plot and rows.json.",
)
IMAGE_SIZE = flags.DEFINE_integer(
    "image_size",
    None,
    "Side of the images: of segmentation's scenes (16 for digits and 64 for "
    "TFDS sets when unset), of detection's (a multiple of 8, one grid cell "
    "per 8x8 patch).",
    lower_bound=8,
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

# What the binaries that compare the methods read (the demo, segmentation
# and detection).
COMPARISON_FLAGS = (LAMBDAS, PRETRAIN_EPOCHS, L2_SP_ALPHAS, ANCHOR_LAMBDAS)
