"""The training state and what builds it: model, optimizer, EMA, lookahead.

Everything that changes results comes from the config:

* optimizer and learning-rate schedules: `optimizers` (the tutorial's plain
  SGD with staircase decay, momentum, parameter groups, Muon);
* model state: `batch_stats` (BatchNorm running statistics; empty for the
  tutorial net), updated by the training step and scored by the evaluator;
* a data-dependent initialisation (`model.data_init`, airbench's whitening
  filters) computed once from training images and then part of the saved
  parameters, so a resumed run never recomputes it;
* airbench's lookahead (`config.lookahead`): every k steps the slow copy
  moves towards the network, slow = d * slow + (1 - d) * net with
  d = base * (step / num_train_steps) ** power, and the network is set to it;
  at the last step the network becomes the slow copy. It covers the
  parameters and the BatchNorm statistics, as airbench's state_dict loop;
* EMA of the parameters, updated after every step with
  `optax.tree.update_moment` and a step-dependent decay:
    - ``tensorflow``: TF's `ExponentialMovingAverage(d, num_updates=step)`,
      decay min(d, (1 + t) / (10 + t)) after the t-th update, shadow variables
      starting at the initial parameters (the tutorial);
    - ``optax_debiased``: exactly `optax.ema(d, debias=True)`, written as an
      EMA of the previous debiased value with decay
      d (1 - d^(t-1)) / (1 - d^t), so that the state holds the averaged
      parameters themselves;
    - ``none``: no EMA (the EMA parameters are the parameters; the evaluator
      scores them once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cifar_jax import models, optimizers
from cifar_jax.errors import UserError


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; also what a checkpoint holds."""

  step: jax.Array  # int32 scalar: number of optimizer updates applied
  params: Any
  batch_stats: Any  # the model's mutable state (BatchNorm statistics); {} if none
  opt_state: optax.OptState
  ema_params: Any
  lookahead: Any  # {'params', 'batch_stats'}: airbench's slow copy; {} when disabled
  rng: jax.Array  # uint32[2]; per-step keys are fold_in(rng, step)


def ema_decay(step: jax.Array, kind: str, decay: float) -> jax.Array:
  """The decay used for the `step`-th EMA update (step >= 1)."""
  t = jnp.asarray(step, jnp.float32)
  d = jnp.float32(decay)
  if kind == 'tensorflow':
    return jnp.minimum(d, (1.0 + t) / (10.0 + t))
  if kind == 'optax_debiased':
    # 1 - d^t as -expm1(t log d): accurate in float32 even where d^t ~ 1.
    one_minus_power = lambda n: -jnp.expm1(n * jnp.log(d))  # noqa: E731
    return d * one_minus_power(t - 1.0) / one_minus_power(t)
  raise UserError(f'Unknown config.ema.kind {kind!r}; use tensorflow or optax_debiased.')


EMA_KINDS = ('tensorflow', 'optax_debiased', 'none')


def update_ema(ema_params: Any, params: Any, step: jax.Array, kind: str, decay: float) -> Any:
  """The EMA after the `step`-th update: decay * ema + (1 - decay) * params."""
  if kind == 'none':
    return params
  return optax.tree.update_moment(params, ema_params, ema_decay(step, kind, decay), order=1)


def apply_lookahead(state: TrainState, lookahead: ml_collections.ConfigDict,
                    num_train_steps: int) -> TrainState:
  """airbench's `LookaheadState.update` after the optimizer step `state.step`."""
  if not state.lookahead:
    return state
  step = state.step
  fraction = step.astype(jnp.float32) / num_train_steps
  decay = lookahead.decay_base * fraction**lookahead.decay_power
  net = {'params': state.params, 'batch_stats': state.batch_stats}
  due = step % lookahead.every_steps == 0
  slow = jax.tree.map(lambda s, n: jnp.where(due, s + (1.0 - decay) * (n - s), s),
                      state.lookahead, net)
  # Due steps set the network to the slow copy; so does the last step (decay 1).
  reset = due | (step >= num_train_steps)
  net = jax.tree.map(lambda s, n: jnp.where(reset, s, n), slow, net)
  return state.replace(params=net['params'], batch_stats=net['batch_stats'], lookahead=slow)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(parameter-initialisation key, training key) drawn from `config.seed`."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, train_rng


def create_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    tx: optax.GradientTransformation,
    init_images: np.ndarray | None = None,
) -> TrainState:
  """A fresh state; all randomness comes from `config.seed`.

  `init_images` (preprocessed training images, `input_pipeline.init_images`)
  feed the model's data-dependent initialisation, if it has one; without them
  such a model keeps its data-independent initial values (shapes only).
  """
  init_rng, train_rng = seed_keys(config.seed)
  dummy = jnp.zeros((1, config.crop_size, config.crop_size, 3), jnp.float32)
  variables = jax.jit(model.init)(init_rng, dummy)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  if init_images is not None and hasattr(model, 'data_init'):
    params = model.data_init(params, init_images)
  if config.ema.kind not in EMA_KINDS:
    raise UserError(f'Unknown config.ema.kind {config.ema.kind!r}; use one of {list(EMA_KINDS)}.')
  if config.lookahead.every_steps < 0:
    raise UserError(f'config.lookahead.every_steps is {config.lookahead.every_steps}; use 0 '
                    '(no lookahead) or a positive number of steps.')
  lookahead = ({'params': params, 'batch_stats': batch_stats}
               if config.lookahead.every_steps else {})
  return TrainState(
      step=jnp.asarray(0, jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema_params=params,
      lookahead=lookahead,
      rng=train_rng,
  )


def create_model_and_optimizer(
    config: ml_collections.ConfigDict,
    num_classes: int,
    num_train_examples: int,
    global_batch_size: int,
) -> tuple[nn.Module, optax.GradientTransformation, optax.Schedule]:
  """The three things a `TrainState` is built from and stepped with.

  The schedule is the default optimizer group's (what the log reports).
  """
  model = models.create_model(config.model, num_classes)
  tx, learning_rate_fn = optimizers.create_optimizer(config, num_train_examples,
                                                     global_batch_size)
  return model, tx, learning_rate_fn


def abstract_train_state(
    config: ml_collections.ConfigDict, num_classes: int, num_train_examples: int = 1,
    global_batch_size: int = 1,
) -> tuple[TrainState, nn.Module]:
  """Shapes and dtypes of the state (no computation): a restore target."""
  model, tx, _ = create_model_and_optimizer(config, num_classes, num_train_examples,
                                            global_batch_size)
  make: Callable[[], TrainState] = lambda: create_train_state(config, model, tx)  # noqa: E731
  return jax.eval_shape(make), model
