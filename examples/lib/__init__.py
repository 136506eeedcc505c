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
- choosing lambda and keras-hub tasks: `lambda_selection` and
  `hub_finetuning`;
- measuring and showing: `accuracy`, `arrays`, `plots` and `console`
  (results on stdout, progress on stderr).

The experiments that the demo, forgetting-benchmark, segmentation and
detection binaries run are a harness, not code to copy: they live in
`benchmarks.experiments`.
"""
