"""The training state and what builds it: model, optimizer, schedule, EMA.

Everything that changes results comes from the config:

* learning rate: the tutorial's staircase exponential decay (0.1, x0.1 every
  350 epochs), or linear warm-up + cosine decay;
* optimizer: plain SGD (the tutorial) or SGD with (Nesterov) momentum;
* EMA of the parameters, updated after every step with
  `optax.tree.update_moment` and a step-dependent decay:
    - ``tensorflow``: TF's `ExponentialMovingAverage(d, num_updates=step)`,
      decay min(d, (1 + t) / (10 + t)) after the t-th update, shadow variables
      starting at the initial parameters (the tutorial);
    - ``optax_debiased``: exactly `optax.ema(d, debias=True)`, written as an
      EMA of the previous debiased value with decay
      d (1 - d^(t-1)) / (1 - d^t), so that the state holds the averaged
      parameters themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cifar_jax import models
from cifar_jax.errors import UserError


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; also what a checkpoint holds."""

  step: jax.Array  # int32 scalar: number of optimizer updates applied
  params: Any
  opt_state: optax.OptState
  ema_params: Any
  rng: jax.Array  # uint32[2]; per-step keys are fold_in(rng, step)


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, num_train_examples: int, global_batch_size: int
) -> optax.Schedule:
  """The learning-rate schedule, in optimizer steps."""
  batches_per_epoch = num_train_examples / global_batch_size  # a float, as in the tutorial
  if config.lr_schedule == 'staircase_exponential':
    return optax.exponential_decay(
        init_value=config.learning_rate,
        transition_steps=max(1, int(batches_per_epoch * config.num_epochs_per_decay)),
        decay_rate=config.lr_decay_factor,
        staircase=True,
    )
  if config.lr_schedule == 'warmup_cosine':
    warmup_steps = int(batches_per_epoch * config.warmup_epochs)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(config.num_train_steps, warmup_steps + 1),
        end_value=0.0,
    )
  raise UserError(
      f'Unknown config.lr_schedule {config.lr_schedule!r}; use staircase_exponential or '
      'warmup_cosine.'
  )


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  if config.optimizer == 'sgd':
    return optax.sgd(learning_rate_fn)
  if config.optimizer == 'momentum':
    return optax.sgd(learning_rate_fn, momentum=config.momentum, nesterov=config.nesterov)
  raise UserError(f'Unknown config.optimizer {config.optimizer!r}; use sgd or momentum.')


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


def update_ema(ema_params: Any, params: Any, step: jax.Array, kind: str, decay: float) -> Any:
  """The EMA after the `step`-th update: decay * ema + (1 - decay) * params."""
  return optax.tree.update_moment(params, ema_params, ema_decay(step, kind, decay), order=1)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(parameter-initialisation key, training key) drawn from `config.seed`."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, train_rng


def create_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    tx: optax.GradientTransformation,
) -> TrainState:
  """A fresh state; all randomness comes from `config.seed`."""
  init_rng, train_rng = seed_keys(config.seed)
  dummy = jnp.zeros((1, config.crop_size, config.crop_size, 3), jnp.float32)
  params = jax.jit(model.init)(init_rng, dummy)['params']
  return TrainState(
      step=jnp.asarray(0, jnp.int32),
      params=params,
      opt_state=tx.init(params),
      ema_params=params,
      rng=train_rng,
  )


def create_model_and_optimizer(
    config: ml_collections.ConfigDict,
    num_classes: int,
    num_train_examples: int,
    global_batch_size: int,
) -> tuple[nn.Module, optax.GradientTransformation, optax.Schedule]:
  """The three things a `TrainState` is built from and stepped with."""
  model = models.create_model(config.model, num_classes)
  learning_rate_fn = create_learning_rate_fn(config, num_train_examples, global_batch_size)
  return model, create_optimizer(config, learning_rate_fn), learning_rate_fn


def abstract_train_state(
    config: ml_collections.ConfigDict, num_classes: int, num_train_examples: int = 1,
    global_batch_size: int = 1,
) -> tuple[TrainState, nn.Module]:
  """Shapes and dtypes of the state (no computation): a restore target."""
  model, tx, _ = create_model_and_optimizer(config, num_classes, num_train_examples,
                                            global_batch_size)
  make: Callable[[], TrainState] = lambda: create_train_state(config, model, tx)  # noqa: E731
  return jax.eval_shape(make), model
