"""cifar_jax: the TensorFlow CIFAR-10 tutorial as a JAX/Flax research codebase.

Stages, in the order the data flows through them (docs/development.md):

  validation      -> the one check of a config, at every entry
  datasets        -> in-memory uint8 arrays from tfds, an image folder or synthetic data
  input_pipeline  -> device-resident dataset, JAX augmentation, per-step batch indices
  models          -> the tutorial network, airbench94, a registry by name
  train_step      -> the pure `train_step` and one device's share of a call
  builder         -> model, optimizer, schedule, state and mapped steps of a config
  loop, actions   -> the training loop and its periodic actions
  train           -> `train_and_evaluate`
  checkpoints     -> Orbax checkpoints under WORKDIR/checkpoints
  scoring         -> exact precision@1 on a whole split
  evaluate        -> the evaluator process beside the trainer
  summaries       -> log lines, JSON lines and TensorBoard summaries
"""
