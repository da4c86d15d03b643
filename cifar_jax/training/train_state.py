"""The training state, and what a step does to it besides the optimizer: EMA, lookahead.

`builder.build` makes the state from the config; here are its parts:

* model state: `batch_stats` (BatchNorm running statistics; empty for the
  tutorial net), updated by the training step and scored by the evaluator;
* a data-dependent initialisation (`model.data_init`, airbench's whitening
  filters) computed once from training images and then part of the saved
  parameters, so a resumed run never recomputes it;
* airbench's lookahead (`LookaheadOptions`): every k steps the slow copy
  moves towards the network, slow = d * slow + (1 - d) * net with
  d = base * (step / num_train_steps) ** power, and the network is set to it;
  at the last step the network becomes the slow copy. It covers the
  parameters and the BatchNorm statistics, as airbench's state_dict loop;
* EMA of the parameters (`EmaOptions`), updated after every step with
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

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cifar_jax.core import fields as spec


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

  def variables(self, params: Any = None) -> dict[str, Any]:
    """The model's variables: `params` (default: the raw parameters) and the model state."""
    return {'params': self.params if params is None else params,
            'batch_stats': self.batch_stats}


def step_number(state: TrainState) -> int:
  """The number of steps a (host) state has done; every replica has done the same."""
  return int(np.asarray(state.step).reshape(-1)[0])


def stack_replicas(states: list[TrainState]) -> TrainState:
  """R states as one whose every leaf has a leading replica axis (one state: unchanged)."""
  if len(states) == 1:
    return states[0]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def replica(tree: Any, index: int) -> Any:
  """Replica `index` of a tree whose leaves have a leading replica axis."""
  return jax.tree.map(lambda x: x[index], tree)


@dataclasses.dataclass(frozen=True)
class EmaOptions:
  """`config.ema`: the kind of moving average of the parameters and its decay."""

  kind: str = 'none'
  decay: float = 0.9999

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> EmaOptions:
    return cls(config.ema.kind, config.ema.decay)


@dataclasses.dataclass(frozen=True)
class LookaheadOptions:
  """`config.lookahead` and the run's length (its decay grows towards the last step)."""

  every_steps: int = 0
  decay_base: float = 0.95**5
  decay_power: float = 3.0
  num_train_steps: int = 1

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> LookaheadOptions:
    lookahead = config.lookahead
    return cls(lookahead.every_steps, lookahead.decay_base, lookahead.decay_power,
               config.num_train_steps)


def ema_decay(step: jax.Array, kind: str, decay: float) -> jax.Array:
  """The decay used for the `step`-th EMA update (step >= 1) of a `tensorflow` or
  `optax_debiased` EMA."""
  t = jnp.asarray(step, jnp.float32)
  d = jnp.float32(decay)
  if kind == 'tensorflow':
    return jnp.minimum(d, (1.0 + t) / (10.0 + t))
  # optax_debiased: 1 - d^t as -expm1(t log d), accurate in float32 even where d^t ~ 1.
  one_minus_power = lambda n: -jnp.expm1(n * jnp.log(d))  # noqa: E731
  return d * one_minus_power(t - 1.0) / one_minus_power(t)


def update_ema(ema_params: Any, params: Any, step: jax.Array, options: EmaOptions) -> Any:
  """The EMA after the `step`-th update: decay * ema + (1 - decay) * params."""
  if options.kind == 'none':
    return params
  return optax.tree.update_moment(params, ema_params,
                                  ema_decay(step, options.kind, options.decay), order=1)


def apply_lookahead(state: TrainState, options: LookaheadOptions) -> TrainState:
  """airbench's `LookaheadState.update` after the optimizer step `state.step`."""
  if not state.lookahead:
    return state
  step = state.step
  fraction = step.astype(jnp.float32) / options.num_train_steps
  decay = options.decay_base * fraction**options.decay_power
  net = state.variables()
  due = step % options.every_steps == 0
  slow = jax.tree.map(lambda s, n: jnp.where(due, s + (1.0 - decay) * (n - s), s),
                      state.lookahead, net)
  # Due steps set the network to the slow copy; so does the last step (decay 1).
  reset = due | (step >= options.num_train_steps)
  net = jax.tree.map(lambda s, n: jnp.where(reset, s, n), slow, net)
  return state.replace(params=net['params'], batch_stats=net['batch_stats'], lookahead=slow)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(parameter-initialisation key, training key) drawn from `config.seed`."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, train_rng


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, *, seed: int,
                       input_shape: tuple[int, int, int], with_lookahead: bool,
                       init_images: np.ndarray | None = None) -> TrainState:
  """A fresh state; all randomness comes from `seed`.

  `init_images` (preprocessed training images, `input_pipeline.init_images`)
  feed the model's data-dependent initialisation (`model.data_init`); without
  them such a model keeps its data-independent initial values (shapes only).
  `input_shape` (height, width, channels) is what the network sees: the
  layers' shapes follow it.
  """
  init_rng, train_rng = seed_keys(seed)
  dummy = jnp.zeros((1, *input_shape), jnp.float32)
  variables = jax.jit(model.init)(init_rng, dummy)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  if init_images is not None:
    params = model.data_init(params, init_images)
  lookahead = {'params': params, 'batch_stats': batch_stats} if with_lookahead else {}
  return TrainState(
      step=jnp.asarray(0, jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema_params=params,
      lookahead=lookahead,
      rng=train_rng,
  )


# ----------------------------------------------------------------------------
# The config fields of the state: the seed, the EMA and lookahead.

EMA_KINDS = ('tensorflow', 'optax_debiased', 'none')
FIELDS = {
    'seed': spec.Field(0, spec.integer(0), 'initialisation, data order and augmentation'),
    'ema.kind': spec.Field('none', spec.choice(EMA_KINDS), 'the moving average of the parameters'),
    'ema.decay': spec.Field(0.9999, spec.number(above=0.0, below=1.0), 'its decay'),
    'lookahead.every_steps': spec.Field(0, spec.integer(0, hint=(
        'config.lookahead.every_steps is {value}; use 0 (no lookahead) or a positive number '
        'of steps.')), "airbench's lookahead period; 0: none"),
    'lookahead.decay_base': spec.Field(0.95**5, spec.number(0.0, 1.0), 'its decay at the start'),
    'lookahead.decay_power': spec.Field(3.0, spec.number(0.0), 'how its decay grows'),
}


spec.declare(__name__, FIELDS)
