"""The experiment harness: what SFT keeps and what it learns, measured.

The binaries `examples.demo`, `examples.forgetting_benchmark`,
`examples.segmentation` and `examples.detection` hold the flags; the
experiments they run are here, importable and free of flags, one module
per experiment with its data:

- `forgetting_experiment`: the demo, one shift of the digits, SFT against
  plain fine-tuning over a grid of lambdas;
- `new_head_experiment`: new classes learned by a new head;
- `forgetting_benchmark` with `image_shifts`: shifts times methods times
  seeds;
- `segmentation_experiment` with `segmentation_data`: a segmentation
  model on digit scenes or a TFDS set;
- `detection_experiment` with `detection_data`: a small detector on
  scenes with boxes.

They train through `examples.lib` (models, training, files, console), as
a user's script would.
"""
