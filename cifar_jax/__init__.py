"""cifar_jax: the TensorFlow CIFAR-10 tutorial as a JAX/Flax research codebase.

Stages, in the order the data flows through them:

  datasets        -> in-memory uint8 arrays from tfds, an image folder or synthetic data
  input_pipeline  -> device-resident dataset, JAX augmentation, per-step batch indices
  models          -> the tutorial network (and a registry for others)
  train           -> pure `train_step`, the training loop
  checkpoints     -> Orbax checkpoints under WORKDIR/checkpoints
  evaluate        -> exact precision@1 on a whole split
  summaries       -> log lines, JSON lines and TensorBoard summaries
"""
