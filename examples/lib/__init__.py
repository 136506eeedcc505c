"""The work behind the example binaries, importable and free of flags.

Each module holds one concept: `training_config` (the settings every
training run shares), `presets` (the defaults each experiment starts
from), `classifiers`, `training` (pretraining and fine-tuning), `saving`,
`accuracy`, `arrays`, `plots`, `console` (results on stdout, progress
on stderr), and one module per experiment
(`forgetting_experiment`, `new_head_experiment`, `segmentation_experiment`
with its `segmentation_data`, `lambda_selection`).
"""
