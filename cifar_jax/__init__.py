"""cifar_jax: the TensorFlow CIFAR-10 tutorial as a JAX/Flax research codebase.

Layers, each importing only those above it in this list (docs/development.md, "Code map"):

  core        -> errors, config fields and registries, sweeps, devices, terminal, writers
  data        -> sources, the decoded cache, image format, device pipeline, augmentations
  models      -> the model families, their registry, Linen and NNX models from outside
  training    -> schedules, optimizers, state, the pure step, the builder, the loop
  evaluation  -> exact scores on a whole split, statistics of groups of runs
  config      -> the check of a whole config; old configs read in today's fields
  workdir     -> checkpoints, the trainer's checkpointer, the one-trainer lock
  run         -> `train_and_evaluate` and its periodic actions, the evaluator process

and the entry points: `main` (the command line), `experiment` (the notebook API),
`benchmark`, `compare`, `cli` (their flags).
"""

# The layers above, lowest first (tests/test_layout.py holds every import to them); every module
# of theirs that reads config fields declares them (`core.fields.declare`).
LAYERS = ('core', 'data', 'models', 'training', 'evaluation', 'config', 'workdir', 'run')
