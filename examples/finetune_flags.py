"""Flags of the two fine-tuning binaries, `examples.finetune` and
`examples.finetune_hub`.

Their defaults are finetune's; `examples.lib.presets.HUB` holds the hub's.
"""

import math

from absl import flags

LAMBDA = flags.DEFINE_float(
    "lambda",
    0.03,
    "Weight of the teacher-consistency term (>= 0); 0 is plain fine-tuning.",
    lower_bound=0.0,
)
flags.register_validator(
    LAMBDA,
    math.isfinite,
    message="--lambda must be a finite number >= 0",
)
EXPORT_DIR = flags.DEFINE_string(
    "export_dir",
    None,
    "Directory to export the student to as a TensorFlow SavedModel (an "
    "existing one is replaced only with finetune's --overwrite); no export "
    "when unset.",
)
