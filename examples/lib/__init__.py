"""The work behind the example binaries, importable and free of flags.

Each module holds one concept:

- the settings and defaults of a run: `training_config` (the settings every
  training run shares) and `presets` (the defaults each binary starts
  from);
- training and its files: `classifiers`, `training` (pretraining and
  fine-tuning), `saving` (files written whole, with the umask's modes),
  `output_paths` (writability checked before training), `run_lock` (one
  run per output) and `run_record` (what made a backup);
- several workers: `cluster` (which one writes the outputs) and
  `local_cluster` (a multi-worker job on one machine);
- measuring and showing: `accuracy`, `arrays`, `plots` and `console`
  (results on stdout, progress on stderr);
- one module per experiment, with its data: `forgetting_experiment` (the
  demo), `new_head_experiment`, `lambda_selection`, `forgetting_benchmark`
  with `image_shifts`, `segmentation_experiment` with `segmentation_data`,
  `detection_experiment` with `detection_data`, and `hub_finetuning`
  (keras-hub tasks).
"""
