"""A run that starts from trained weights (`config.init_from`): another run's, or PyTorch's.

  --config.init_from=/runs/base          # that run's latest checkpoint: its EMA parameters
  --config.init_from=/runs/base@4000     # its step 4000 (config.init_parameters=raw: raw ones)
  --config.init_from=~/resnet18.pth      # a PyTorch state dict, or a dict holding one

Every parameter and BatchNorm statistic of the new network whose name and shape match one of
the source is loaded, bit for bit; the rest keep their fresh initialisation -- the head, when
the number of classes differs, and what `config.init_exclude` names (module names or path
patterns, as `config.freeze`: ('logits',) for a new head over as many, other, classes) -- and
one line says how many were loaded and which were not.
Nothing matching, or a tensor of another shape that is not the head, is one `error:` sentence.
A source run of several replicas or a sweep gives its first run; every run of the new one
(replicas, sweep points) starts from the same weights, with its own fresh head.

Only a run's first start reads the source: `Checkpointer.restore_latest` calls `initialise`
where the WORKDIR has no checkpoint, so a resume continues from the run's own checkpoints
(and the source may be gone by then). `config.init_from` is saved with the run's config.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from cifar_jax import models
from cifar_jax.core import fields as spec
from cifar_jax.core import sweeps, terminal
from cifar_jax.core.errors import UserError
from cifar_jax.models import torch_weights
from cifar_jax.training import builder, freezing, train_state
from cifar_jax.workdir import checkpoints

TORCH_SUFFIXES = ('.pt', '.pth')


def _check_init_from(c: spec.Checker, path: str) -> None:
  value = c.text(path)
  where, _, step = value.rpartition('@')
  if value.endswith(TORCH_SUFFIXES) or not where:
    return
  if not step.isdigit():
    raise UserError(f'config.init_from is {value!r}; name a run as WORKDIR or WORKDIR@STEP '
                    '(a step number), or a PyTorch file (.pt, .pth).')


FIELDS = {
    'init_from': spec.Field('', _check_init_from, "'': random; WORKDIR[@STEP] or a .pt/.pth",
                            before=''),
    'init_parameters': spec.Field('ema', spec.choice(('ema', 'raw')),
                                  "a source run's EMA or raw parameters", before='ema'),
    'init_exclude': spec.Field((), freezing.check_patterns,
                               'modules or path patterns not loaded (a new head)', before=[]),
}
spec.declare(__name__, FIELDS, check_parameters=lambda config, paths: (
    freezing.check_patterns_match('init_exclude', config.init_exclude, paths)))


@dataclasses.dataclass(frozen=True)
class Source:
  """Trained weights: {'params/module/leaf' or 'batch_stats/module/leaf': array}, and what
  they are (for the lines that name them)."""

  description: str
  arrays: dict[str, np.ndarray]


def read_source(config: ml_collections.ConfigDict) -> Source:
  """The weights `config.init_from` names."""
  location = os.path.expanduser(config.init_from)
  if location.endswith(TORCH_SUFFIXES):
    if not os.path.isfile(location):
      raise UserError(f'config.init_from is {config.init_from!r}, which does not exist; name a '
                      'PyTorch state dict (.pt, .pth) or a run\'s WORKDIR.')
    state_dict = torch_weights.read_state_dict(location)
    renames = getattr(models.model_class(config.model.name), 'TORCH_NAMES', {})
    arrays, _ = torch_weights.to_variables(state_dict, renames)
    return Source(f'PyTorch file {location}', arrays)
  workdir, at, step = location.rpartition('@')
  if not at:
    workdir, step = location, ''
  return _read_run(workdir, int(step) if step else None, config.init_parameters)


def _read_run(workdir: str, step: int | None, which: str) -> Source:
  if not os.path.isdir(checkpoints.checkpoint_dir(workdir)):
    raise UserError(f'config.init_from names {workdir}, which holds no checkpoints (nor is it a '
                    '.pt / .pth file); name a run\'s WORKDIR or a PyTorch state dict.')
  manager = checkpoints.create_manager(workdir, read_only=True)
  try:
    steps = manager.all_steps()
    if not steps or (step is not None and step not in steps):
      raise UserError(f'config.init_from names step {step} of {workdir}, which has the '
                      f'checkpoints {sorted(steps)}; name one of them.' if steps else
                      f'config.init_from names {workdir}, which has no finished checkpoint.')
    step = max(steps) if step is None else step
    loaded = checkpoints.load(manager, step, lambda config, trained: builder.build(
        config, num_classes=len(trained['class_names']),
        image_shape=trained.get('image_shape')).state)
  finally:
    manager.close()
  state = loaded.state
  if sweeps.num_runs(loaded.config) > 1:
    state = train_state.replica(state, 0)
  params = state.ema_params if which == 'ema' else state.params
  arrays = _flat({'params': params, 'batch_stats': state.batch_stats})
  kind = 'EMA' if which == 'ema' else 'raw'
  return Source(f'run {workdir} at step {step} ({kind} parameters)', arrays)


def _flat(tree: Any) -> dict[str, np.ndarray]:
  """{'collection/module/leaf': array} of a tree of variables."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {freezing.path_name(path): np.asarray(leaf) for path, leaf in leaves}


def initialise(fresh: train_state.TrainState, config: ml_collections.ConfigDict,
               num_classes: int, source: Source | None = None) -> train_state.TrainState:
  """`fresh` (host arrays; every run's when stacked) with the source's matching tensors."""
  source = source or read_source(config)
  runs = sweeps.num_runs(config)
  variables = _flat({'params': fresh.params, 'batch_stats': fresh.batch_stats})
  loaded, kept = {}, []
  for name, value in variables.items():
    shape = value.shape[1:] if runs > 1 else value.shape
    given = source.arrays.get(name)
    if given is None or freezing.matches(name.split('/', 1)[1], config.init_exclude):
      kept.append(name)
    elif given.shape == shape:
      loaded[name] = np.array(np.broadcast_to(given.astype(value.dtype), value.shape))
    elif _is_head(shape, given.shape, num_classes):
      kept.append(name)
    else:
      raise UserError(f'{name} has shape {tuple(given.shape)} in {source.description} but '
                      f'{tuple(shape)} in config.model; start from a source of the same '
                      'network (only the head may differ, in its number of classes).')
  if not loaded:
    raise UserError(f'No tensor of {source.description} matches config.model by name and '
                    f'shape (the network has {sorted(variables)[:4]}..., the source '
                    f'{sorted(source.arrays)[:4]}...); name weights of the same network.')
  _report(source, loaded, kept, variables)
  params = _replace(fresh.params, 'params', loaded)
  batch_stats = _replace(fresh.batch_stats, 'batch_stats', loaded)
  lookahead = ({'params': params, 'batch_stats': batch_stats} if fresh.lookahead else
               fresh.lookahead)
  return fresh.replace(params=params, ema_params=params, batch_stats=batch_stats,
                       lookahead=lookahead)


def _is_head(shape: tuple[int, ...], given: tuple[int, ...], num_classes: int) -> bool:
  """Whether a tensor differs from the source's only in its last axis, the classes."""
  return (len(shape) == len(given) and shape[:-1] == given[:-1]
          and shape[-1] == num_classes)


def _replace(tree: Any, collection: str, loaded: dict[str, np.ndarray]) -> Any:
  def value(path, leaf):
    return loaded.get(f'{collection}/{freezing.path_name(path)}', leaf)
  return jax.tree_util.tree_map_with_path(value, tree)


def _report(source: Source, loaded: dict[str, Any], kept: list[str],
            variables: dict[str, Any]) -> None:
  line = f'Loaded {len(loaded)} of {len(variables)} tensors from {source.description}'
  if kept:
    line += f'; kept fresh: {", ".join(kept)}'
  unused = sorted(set(source.arrays) - set(variables))
  if unused:
    line += f'; not in this network: {len(unused)} of the source\'s ({", ".join(unused[:3])}'
    line += ', ...)' if len(unused) > 3 else ')'
  if jax.process_index() == 0:
    terminal.print_line(line + '.')
  logging.info('%s.', line)
