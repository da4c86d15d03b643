"""The one check of a config: every field's type, range and name, and how fields combine.

`validate(config)` runs at every entry -- `python -m cifar_jax.main`,
`python -m cifar_jax.benchmark`, `experiment.load_config`,
`train.train_and_evaluate`, `evaluate.evaluate` -- and raises `UserError` with
one sentence naming the field, its value and what it accepts. It is the only
place that raises for a config field: the code behind the entries trusts the
config (what can still fail there is data, disk, checkpoints and peers).

A config is the nested `ConfigDict` of an `experiments/*.py` file. Three of
its groups are chosen by name and take that name's own fields: `model`
(`models.MODELS`), `schedule` (`SCHEDULES`) and each of
`optimizer_groups.<name>` (`GROUP_FIELDS`). Every other field is listed in
`_check_fields`; a field that none of them knows is refused, and a field
renamed since earlier releases (`RENAMED`) is refused with its new name.
Checkpoints written under the old names are read through
`upgrade_saved_config`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import copy
import dataclasses
import fnmatch
import functools
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cifar_jax import datasets, image_format, models, sweeps
from cifar_jax.errors import UserError

# ----------------------------------------------------------------------------
# What the code accepts, by name.

SCHEDULES: dict[str, tuple[str, ...]] = {
    'constant': (),
    'staircase_exponential': ('decay_factor', 'epochs_per_decay'),
    'warmup_cosine': ('warmup_epochs',),
    'linear_warmup_decay': ('warmup_fraction', 'start_scale', 'end_scale'),
    'piecewise_constant': ('boundaries_epochs', 'decay_factor'),
}
OPTIMIZERS = ('sgd', 'momentum', 'muon', 'frozen')
HYPERPARAMETER_FORMS = ('plain', 'decoupled', 'pytorch')
GROUP_FIELDS = ('params', 'optimizer', 'learning_rate', 'lr_multiplier', 'momentum', 'nesterov',
                'weight_decay', 'train_epochs', 'schedule_over')
LOSS_REDUCTIONS = ('mean', 'sum')
PADDING_MODES = ('reflect', 'constant')  # augment.translate's: airbench's | torchvision's (zeros)
EMA_KINDS = ('tensorflow', 'optax_debiased', 'none')
PREPROCESSING = ('per_image_standardization', 'channel_normalization')
TTA = ('none', 'mirror', 'mirror_translate')
HEADLINES = ('ema', 'raw')
DATASET_SOURCES = ('tfds', 'image_folder', 'synthetic')
PLACEMENTS = ('auto', 'device', 'host')
REPLICA_EXECUTIONS = ('vmap', 'loop')
SYNTHETIC_SPLITS = ('train', 'test')

# Old name -> new name, for configs and checkpoints written before the names changed.
RENAMED = {
    'lr_schedule': 'schedule.name',
    'lr_decay_factor': 'schedule.decay_factor',
    'num_epochs_per_decay': 'schedule.epochs_per_decay',
    'warmup_epochs': 'schedule.warmup_epochs',
    'lr_warmup_fraction': 'schedule.warmup_fraction',
    'lr_start_scale': 'schedule.start_scale',
    'lr_end_scale': 'schedule.end_scale',
    'weight_decay_modules': 'l2_penalty_modules',
    'sgd_weight_decay': 'weight_decay',
    'optimizer_groups.*.sgd_weight_decay': 'optimizer_groups.*.weight_decay',
}
# `weight_decay` itself changed meaning: before, the tutorial's L2 term in the loss (now
# `l2_penalty`); now the optimizer's decay (before, `sgd_weight_decay`).

# Fields added since checkpoints were first written, with the value that gives the behaviour
# from before they existed (what a saved config without them is read with).
ADDED = {
    'num_replicas': 1,
    'replica_execution': 'loop',
    'dataset.eval_path': '',
    'dataset.image_size': 0,
    'dataset.resize_method': 'bilinear',
    'dataset.resize_aspect': 'crop',
    'dataset.channels': 0,
    'dataset.placement': 'auto',  # either gives the same parameters
    'eval_resize': 0,
    'num_train_epochs': 0.0,
    'augment.random_resized_crop': False,
    'augment.padding_mode': 'reflect',
    'augment.crop_scale': [0.08, 1.0],  # as JSON keeps them
    'augment.crop_ratio': [3 / 4, 4 / 3],
    'sweep': {},
    'sweep_mode': 'cross',
}


# ----------------------------------------------------------------------------
# Entry point.

_validated: set[str] = set()


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `UserError` for the first field the code does not accept; see the module doc."""
  key = config.to_json_best_effort(sort_keys=True)
  if key in _validated:  # every entry checks; a config that passed once passes again
    return
  _check_renamed(config.to_dict())
  checker = _Checker(config)
  _check_fields(checker)
  checker.refuse_unknown()
  _check_model_structure(config)
  # A sweep's every point must be a valid config: the ranges above, for each swept value.
  for point in sweeps.check_sweep(config, _fail):
    validate(point)
  _validated.add(key)


def _fail(message: str) -> None:
  raise UserError(message)


def _check_renamed(fields: dict[str, Any]) -> None:
  old = _old_names(fields)
  if old:
    renamed = [f'config.{path} is now config.{_new_name(path, pattern)}' for path, pattern in old]
    if 'weight_decay_modules' in fields:
      renamed.insert(0, 'config.weight_decay (the L2 term in the loss) is now config.l2_penalty')
    raise UserError(f'This config uses field names of an earlier cifar_jax ({"; ".join(renamed)}); '
                    'rename them (docs/development.md, "Renamed config fields").')


def _old_names(fields: dict[str, Any]) -> list[tuple[str, str]]:
  """(field path, RENAMED pattern) of every old name in `fields` (a nested dict)."""
  return [(path, pattern) for path in _leaf_paths(fields) for pattern in RENAMED
          if fnmatch.fnmatchcase(path, pattern)]


def _new_name(path: str, pattern: str) -> str:
  if '*' not in pattern:
    return RENAMED[pattern]
  group = path.split('.')[1]
  return RENAMED[pattern].replace('*', group)


def _leaf_paths(fields: dict[str, Any], prefix: str = '') -> list[str]:
  paths = []
  for name, value in fields.items():
    if isinstance(value, dict) and value:
      paths += _leaf_paths(value, f'{prefix}{name}.')
    else:
      paths.append(f'{prefix}{name}')
  return paths


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
  """A config saved with a checkpoint, in today's fields.

  Old names (`RENAMED`) become the new ones; fields added since (`ADDED`) get
  the values that mean what the run did.
  """
  leaves = _leaf_paths(saved)
  missing = [path for path in ADDED  # (a group such as `sweep` is there if any field under it is)
             if path not in leaves and not any(leaf.startswith(path + '.') for leaf in leaves)]
  if not _old_names(saved) and not missing:
    return saved
  upgraded = copy.deepcopy(saved)
  for path in missing:
    *parents, leaf = path.split('.')
    target = upgraded
    for parent in parents:
      target = target.setdefault(parent, {})
    target[leaf] = ADDED[path]
  if not _old_names(saved):
    return upgraded
  # Before the renames, `weight_decay` was the L2 term in the loss.
  upgraded['l2_penalty'] = upgraded.pop('weight_decay', 0.0)
  schedule = {}
  for old, new in RENAMED.items():
    if old in upgraded:
      section, _, field = new.rpartition('.')
      if section == 'schedule':
        schedule[field] = upgraded.pop(old)
      else:
        upgraded[new] = upgraded.pop(old)
  for group in upgraded.get('optimizer_groups', {}).values():
    if 'sgd_weight_decay' in group:
      group['weight_decay'] = group.pop('sgd_weight_decay')
  name = schedule.get('name')
  upgraded['schedule'] = {'name': name, **{k: schedule[k] for k in SCHEDULES.get(name, ())}}
  return upgraded


# ----------------------------------------------------------------------------
# Field checks.


class _Checker:
  """Reads fields by dotted path, checks them, and remembers which were checked."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.seen: set[str] = set()
    self.groups: set[str] = set()  # groups whose fields are checked by name elsewhere

  def get(self, path: str) -> Any:
    value = self.config
    for part in path.split('.'):
      if not isinstance(value, ml_collections.ConfigDict) or part not in value:
        raise UserError(f'The config has no field config.{path}; start from a file in '
                        'experiments/ (experiments/base.py lists every field).')
      value = value[part]
    self.seen.add(path)
    return value

  def integer(self, path: str, minimum: int | None = None, maximum: int | None = None,
              hint: str = '') -> int:
    value = self.get(path)
    if isinstance(value, bool) or not isinstance(value, int):
      raise UserError(f'config.{path} is {value!r}; it must be a whole number.')
    self._range(path, value, minimum, maximum, hint)
    return value

  def number(self, path: str, minimum: float | None = None, maximum: float | None = None,
             hint: str = '', below: float | None = None, above: float | None = None) -> float:
    value = self.get(path)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise UserError(f'config.{path} is {value!r}; it must be a finite number.')
    if above is not None and not value > above:
      raise UserError(hint or f'config.{path} is {value}; it must be greater than {above}.')
    if below is not None and not value < below:
      raise UserError(hint or f'config.{path} is {value}; it must be less than {below}.')
    self._range(path, value, minimum, maximum, hint)
    return value

  @staticmethod
  def _range(path, value, minimum, maximum, hint) -> None:
    if minimum is not None and value < minimum:
      raise UserError(hint or f'config.{path} is {value}; it must be at least {minimum}.')
    if maximum is not None and value > maximum:
      raise UserError(hint or f'config.{path} is {value}; it must be at most {maximum}.')

  def flag(self, path: str) -> bool:
    value = self.get(path)
    if not isinstance(value, bool):
      raise UserError(f'config.{path} is {value!r}; it must be True or False.')
    return value

  def text(self, path: str, allow_none: bool = False) -> str | None:
    value = self.get(path)
    if not (isinstance(value, str) or (allow_none and value is None)):
      raise UserError(f'config.{path} is {value!r}; it must be a string.')
    return value

  def choice(self, path: str, choices: Sequence[str]) -> str:
    value = self.get(path)
    if value not in choices:
      raise UserError(f'Unknown config.{path} {value!r}; use one of {list(choices)}.')
    return value

  def sequence(self, path: str, item: type | tuple[type, ...], length: int | None = None,
               min_length: int = 0) -> tuple:
    value = self.get(path)
    ok = isinstance(value, (tuple, list)) and all(
        isinstance(x, item) and not isinstance(x, bool) for x in value)
    if not ok or (length is not None and len(value) != length) or len(value) < min_length:
      size = f'{length} ' if length is not None else ''
      kind = {str: 'strings', int: 'whole numbers'}.get(item, 'numbers')
      raise UserError(f'config.{path} is {value!r}; it must be a tuple of {size}{kind}.')
    return tuple(value)

  def refuse_unknown(self) -> None:
    for path in _leaf_paths(self.config.to_dict()):
      checked_elsewhere = any(path == group or path.startswith(group + '.')
                              for group in self.groups)
      if path not in self.seen and not checked_elsewhere:
        raise UserError(f'config.{path} is not a field cifar_jax reads; remove it or fix its '
                        'name (experiments/base.py lists every field).')


def _check_fields(c: _Checker) -> None:
  c.integer('seed', 0)
  _check_dataset(c)
  _check_input(c)
  _check_model(c)
  c.integer('model_init_examples', 1)
  num_devices = c.integer('num_devices')
  if num_devices != -1 and num_devices < 1:
    raise UserError(f'config.num_devices is {num_devices}; use -1 (all local devices) or N >= 1.')
  c.integer('num_replicas', 1)
  c.choice('replica_execution', REPLICA_EXECUTIONS)
  c.choice('sweep_mode', sweeps.SWEEP_MODES)
  c.groups.add('sweep')  # its fields are checked by sweeps.check_sweep
  c.number('num_train_epochs', 0.0, hint=(
      f'config.num_train_epochs is {c.config.num_train_epochs}; use 0 (train '
      'config.num_train_steps) or a positive number of epochs.'))
  for field in ('per_device_batch_size', 'num_train_steps', 'steps_per_call', 'log_every_steps',
                'checkpoint_every_steps', 'keep_checkpoints', 'histogram_every_steps',
                'histogram_sample_size', 'input_image_grid_size'):
    c.integer(field, 1)
  profile = c.get('profile_steps')
  if not isinstance(profile, (tuple, list)) or (profile and (
      len(profile) != 2 or not all(isinstance(x, int) for x in profile)
      or profile[0] < 0 or profile[1] < 1)):
    raise UserError(f'config.profile_steps is {profile}; use () (off) or (start, count) with '
                    'start >= 0 and count >= 1.')
  _check_optimizer(c)
  _check_loss(c)
  c.integer('lookahead.every_steps', 0, hint=(
      f'config.lookahead.every_steps is {c.config.lookahead.every_steps}; use 0 (no lookahead) '
      'or a positive number of steps.'))
  c.number('lookahead.decay_base', 0.0, 1.0)
  c.number('lookahead.decay_power', 0.0)
  c.choice('ema.kind', EMA_KINDS)
  c.number('ema.decay', above=0.0, below=1.0)
  c.number('collective_timeout_secs', 0.0, hint=(
      f'config.collective_timeout_secs is {c.config.collective_timeout_secs}; use 0 (never) or '
      'a positive number of seconds.'))
  c.number('checkpoint_every_secs', 0.0, hint=(
      f'config.checkpoint_every_secs is {c.config.checkpoint_every_secs}; use 0 (save by steps '
      'only) or a positive number of seconds.'))
  c.text('compilation_cache_dir')
  c.integer('eval_every_steps', 0, hint=(
      f'config.eval_every_steps is {c.config.eval_every_steps}; use 0 (only at the end) or a '
      'positive number of steps.'))
  _check_eval(c)


def _check_dataset(c: _Checker) -> None:
  source = c.choice('dataset.source', DATASET_SOURCES)
  c.text('dataset.name')
  c.text('dataset.data_dir', allow_none=True)
  c.text('dataset.path')
  if c.text('dataset.eval_path') and source != 'image_folder':
    raise UserError(f'config.dataset.eval_path is set but config.dataset.source is {source!r}; '
                    'a separate eval folder is for source=image_folder.')
  c.text('dataset.cache_dir')
  c.integer('dataset.seed', 0)
  c.integer('dataset.synthetic_num_classes', 2)
  size = c.integer('dataset.synthetic_image_size', 4)
  if size % 4:
    raise UserError(f'config.dataset.synthetic_image_size is {size}; it must be a multiple of '
                    '4 (the synthetic class templates are 4x4 blocks).')
  for field in ('train_split', 'eval_split'):
    expression = c.text(f'dataset.{field}')
    if source == 'tfds':
      if not expression:
        raise UserError(f'config.dataset.{field} is empty; name a split such as "train".')
      continue
    parsed = _parse_split(expression)
    if parsed is None:
      raise UserError(f'Cannot parse split {expression!r} (config.dataset.{field}); write e.g. '
                      '"train", "train[:90%]" or "train[4500:]".')
    if source == 'synthetic' and parsed not in SYNTHETIC_SPLITS:
      raise UserError(f'Synthetic data has splits "train" and "test", not {parsed!r} '
                      f'(config.dataset.{field}).')
  minimum = 1 if source == 'synthetic' else 0
  c.integer('dataset.synthetic_train_size', minimum)
  c.integer('dataset.synthetic_test_size', minimum)
  _check_image_format(c)
  c.choice('dataset.placement', PLACEMENTS)


def _check_image_format(c: _Checker) -> None:
  size = c.get('dataset.image_size')
  square = isinstance(size, int) and not isinstance(size, bool) and size >= 0
  pair = (isinstance(size, (tuple, list)) and len(size) == 2 and all(
      isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in size))
  if not (square or pair):
    raise UserError(f'config.dataset.image_size is {size!r}; use 0 (the data\'s size), N '
                    '(N x N pixels) or (height, width).')
  c.choice('dataset.resize_method', image_format.RESIZE_METHODS)
  c.choice('dataset.resize_aspect', image_format.RESIZE_ASPECTS)
  channels = c.get('dataset.channels')
  if channels not in image_format.CHANNELS or isinstance(channels, bool):
    raise UserError(f'config.dataset.channels is {channels!r}; use 0 (the data\'s), 1 (grey) '
                    'or 3 (colour).')


def image_height_width(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """The training images' (height, width) where the config alone fixes it, else None."""
  pair = image_format.size_pair(config.dataset.image_size)
  if pair is None and config.dataset.source == 'synthetic':
    size = config.dataset.synthetic_image_size
    pair = (size, size)
  return pair


def _parse_split(expression: str) -> str | None:
  match = datasets.SPLIT_RE.match(expression.replace(' ', ''))
  return match['name'] if match else None


def _check_input(c: _Checker) -> None:
  crop_size = c.integer('crop_size', 0, hint=(
      f'config.crop_size is {c.config.crop_size}; use 0 (the whole image) or a number of pixels.'))
  known = image_height_width(c.config)
  translate = c.integer('augment.translate', 0, hint=(
      f'config.augment.translate is {c.config.augment.translate}; use 0 or a number of pixels.'))
  c.choice('augment.padding_mode', PADDING_MODES)
  resized_crop = c.flag('augment.random_resized_crop')
  if known and crop_size > min(known) + (0 if resized_crop else 2 * translate):
    where = ('config.dataset.image_size' if c.config.dataset.image_size
             else 'config.dataset.synthetic_image_size')
    raise UserError(f'config.crop_size is {crop_size}, larger than the images ({known[0]}x'
                    f'{known[1]}, {where}); lower it or make the images larger.')
  eval_resize = c.integer('eval_resize', 0, hint=(
      f'config.eval_resize is {c.config.eval_resize}; use 0 (no resize) or the evaluation '
      'images\' shorter side in pixels.'))
  if eval_resize and eval_resize < crop_size:
    raise UserError(f'config.eval_resize is {eval_resize}, smaller than config.crop_size '
                    f'({crop_size}); the central crop must fit in the resized image.')
  if eval_resize and not crop_size:
    raise UserError('config.eval_resize needs a config.crop_size (0 scores the whole image, '
                    'which no resize changes); set config.crop_size or eval_resize=0.')
  scale = c.sequence('augment.crop_scale', (int, float), length=2)
  if not 0 < scale[0] <= scale[1] <= 1:
    raise UserError(f'config.augment.crop_scale is {scale}; use (low, high) with '
                    '0 < low <= high <= 1 (shares of the image\'s area).')
  ratio = c.sequence('augment.crop_ratio', (int, float), length=2)
  if not 0 < ratio[0] <= ratio[1]:
    raise UserError(f'config.augment.crop_ratio is {ratio}; use (low, high) with '
                    '0 < low <= high (width / height).')
  if resized_crop and translate:
    raise UserError('config.augment.random_resized_crop and config.augment.translate are two '
                    'ways of cropping; set translate=0 or random_resized_crop=False.')
  c.choice('preprocess', PREPROCESSING)
  channels = len(c.sequence('channel_mean', (int, float), min_length=1))
  std = c.sequence('channel_std', (int, float), length=channels)
  if min(std) <= 0:
    raise UserError(f'config.channel_std is {std}; every standard deviation must be positive.')
  wanted = c.config.dataset.channels
  if c.config.preprocess == 'channel_normalization' and wanted and wanted != channels:
    raise UserError(f'config.dataset.channels is {wanted} but config.channel_mean and '
                    f'config.channel_std give {channels}; give one mean and std per channel.')
  flip = c.flag('augment.flip_left_right')
  if c.flag('augment.alternating_flip') and not flip:
    raise UserError('config.augment.alternating_flip needs config.augment.flip_left_right.')
  c.number('augment.max_brightness_delta', 0.0)
  c.flag('augment.random_contrast')
  lower = c.number('augment.contrast_lower', 0.0)
  c.number('augment.contrast_upper', lower, hint=(
      f'config.augment.contrast_upper is {c.config.augment.contrast_upper}; it must be at least '
      f'config.augment.contrast_lower ({lower}).'))


# Range checks of model fields; a field listed for no model is checked against the type of the
# model's default value. Model names and fields come from `models.MODELS` (or, for a model
# outside the package, its class).
def _model_rules(name: str) -> dict[str, Callable[[_Checker, str], Any]]:
  if models.is_external(name):  # its fields mean what its author says: types only
    return {}
  positive = lambda c, p: c.integer(p, 1)  # noqa: E731
  rules = {
      'conv_features': positive, 'local3_features': positive, 'local4_features': positive,
      'formulation': lambda c, p: c.choice(p, models.FORMULATIONS),
      'dtype': lambda c, p: c.choice(p, tuple(models.DTYPES)),
      'widths': lambda c, p: _positive_integers(c, p),
      'whiten_patch_size': positive,
      'whiten_eps': lambda c, p: c.number(p, above=0.0),
      'whiten_bias_init': lambda c, p: c.choice(p, models.WHITEN_BIAS_INITS),
      'batch_norm_momentum': lambda c, p: c.number(p, 0.0, below=1.0),
      'batch_norm_epsilon': lambda c, p: c.number(p, above=0.0),
      'head_multiplier': lambda c, p: c.number(p, above=0.0),
      'head_init': lambda c, p: c.choice(p, models.HEAD_INITS),
      'width': positive, 'width_factor': positive, 'stem_width': positive,
      'stem': lambda c, p: c.choice(p, models.STEMS),
  }
  if name in ('resnet', 'preact_resnet'):
    rules['depth'] = lambda c, p: c.choice(p, sorted(models.DEPTHS))
  elif name == 'wide_resnet':
    rules['depth'] = _wide_resnet_depth
  return rules


def _wide_resnet_depth(c: _Checker, path: str) -> int:
  depth = c.integer(path, 10)
  if (depth - 4) % 6:
    raise UserError(f'config.{path} is {depth}; a Wide ResNet has depth 6n + 4 (16, 22, 28, '
                    '40, ...): two convolutions per block, three groups of n blocks.')
  return depth


def _positive_integers(c: _Checker, path: str) -> tuple[int, ...]:
  values = c.sequence(path, int, min_length=1)
  if min(values) < 1:
    raise UserError(f'config.{path} is {values}; every width must be at least 1.')
  return values


def _check_model(c: _Checker) -> None:
  name = c.text('model.name')
  accepted = models.model_fields(name)  # an unknown name is models.model_class's sentence
  rules = _model_rules(name)
  c.groups.add('model')
  for field, value in c.config.model.items():
    if field == 'name':
      continue
    if field not in accepted:
      raise UserError(f'config.model does not fit model {name!r}: it has no field {field!r} '
                      f'(its fields: {sorted(accepted)}).')
    if field in rules:
      rules[field](c, f'model.{field}')
    elif field == 'dtype':
      c.choice('model.dtype', tuple(models.DTYPES))
    elif (accepted[field] is not dataclasses.MISSING and accepted[field] is not None
          and not isinstance(value, type(accepted[field]))):
      raise UserError(f'config.model.{field} is {value!r}; model {name!r} takes a '
                      f'{type(accepted[field]).__name__} there.')
  required = sorted(field for field, default in accepted.items()
                    if default is dataclasses.MISSING and field not in c.config.model)
  if required:
    raise UserError(f'Model {name!r} needs config.model.{required[0]} (it has no default); set '
                    'it in the config.')


def _check_optimizer(c: _Checker) -> None:
  c.choice('optimizer', OPTIMIZERS)
  c.number('learning_rate', 0.0)
  c.number('momentum', 0.0, below=1.0)
  c.flag('nesterov')
  c.choice('hyperparameter_form', HYPERPARAMETER_FORMS)
  c.number('weight_decay', 0.0)
  name = c.choice('schedule.name', tuple(SCHEDULES))
  given = sorted(k for k in c.config.schedule if k != 'name')
  if given != sorted(SCHEDULES[name]):
    raise UserError(f'config.schedule {name!r} takes the fields {list(SCHEDULES[name])}, not '
                    f'{given}; set config.schedule in the config file (see experiments/).')
  c.groups.add('schedule')
  checks = {'decay_factor': dict(above=0.0), 'epochs_per_decay': dict(above=0.0),
            'warmup_epochs': dict(minimum=0.0), 'warmup_fraction': dict(minimum=0.0, maximum=1.0),
            'start_scale': dict(minimum=0.0), 'end_scale': dict(minimum=0.0)}
  for field in SCHEDULES[name]:
    if field == 'boundaries_epochs':
      boundaries = c.sequence('schedule.boundaries_epochs', (int, float), min_length=1)
      pairs = zip(boundaries, boundaries[1:], strict=False)
      if min(boundaries) < 0 or any(earlier >= later for earlier, later in pairs):
        raise UserError(f'config.schedule.boundaries_epochs is {boundaries}; give the epochs '
                        'where the learning rate drops, increasing and not negative.')
    else:
      c.number(f'schedule.{field}', **checks[field])
  for field in c.config.optimizer_groups:
    _check_group(c, field)
  c.groups.add('optimizer_groups')
  c.integer('muon.ns_steps', 1)
  c.sequence('muon.ns_coefficients', (int, float), length=3)
  c.number('muon.eps', above=0.0)
  c.flag('muon.renormalize')


def _check_group(c: _Checker, name: str) -> None:
  group = c.config.optimizer_groups[name]
  prefix = f'optimizer_groups.{name}'
  if name == 'default':
    raise UserError('config.optimizer_groups.default is reserved for the parameters no group '
                    'matches (they take the top-level fields); rename that group.')
  if not isinstance(group, ml_collections.ConfigDict):
    raise UserError(f'config.{prefix} is {group!r}; a group is a dict of {list(GROUP_FIELDS)}.')
  unknown = sorted(set(group) - set(GROUP_FIELDS))
  if unknown:
    raise UserError(f'config.{prefix} has unknown fields {unknown}; a group takes '
                    f'{list(GROUP_FIELDS)}.')
  if not group.get('params'):
    raise UserError(f'config.{prefix}.params is empty; give glob patterns of parameter paths '
                    'such as "*norm*/bias".')
  c.sequence(f'{prefix}.params', str, min_length=1)
  optimizer = group.get('optimizer', c.config.optimizer)
  if optimizer not in OPTIMIZERS:
    raise UserError(f'Unknown optimizer {optimizer!r} (group {name}); use one of '
                    f'{list(OPTIMIZERS)}.')
  for field, limits in (('learning_rate', dict(minimum=0.0)), ('lr_multiplier', dict(above=0.0)),
                        ('momentum', dict(minimum=0.0, below=1.0)),
                        ('weight_decay', dict(minimum=0.0)), ('train_epochs', dict(minimum=0.0))):
    if field in group:
      c.number(f'{prefix}.{field}', **limits)
  if 'nesterov' in group:
    c.flag(f'{prefix}.nesterov')
  if group.get('schedule_over', 'run') not in ('run', 'train_epochs'):
    raise UserError(f'config.{prefix}.schedule_over is {group.schedule_over!r}; use run or '
                    'train_epochs.')
  if optimizer == 'muon' and group.get('weight_decay', c.config.weight_decay):
    raise UserError(f'Group {name} uses muon, which has no weight decay; set its weight_decay '
                    'to 0.')


def _check_loss(c: _Checker) -> None:
  c.number('label_smoothing', 0.0, below=1.0)
  c.choice('loss_reduction', LOSS_REDUCTIONS)
  c.number('l2_penalty', 0.0)
  c.sequence('l2_penalty_modules', str)


def _check_eval(c: _Checker) -> None:
  c.integer('eval.batch_size', 1)
  c.choice('eval.headline', HEADLINES)
  c.choice('eval.tta', TTA)
  c.text('eval.platform')
  c.number('eval.poll_secs', above=0.0)
  c.number('eval.timeout_secs', 0.0)
  c.flag('eval.run_once')
  c.integer('eval.num_misclassified_images', 0)


# ----------------------------------------------------------------------------
# Fields checked against the model's parameters (their paths, from shapes only).


def _check_model_structure(config: ml_collections.ConfigDict) -> None:
  size = config.crop_size or min(image_height_width(config) or (32, 32))
  try:
    paths = _parameter_paths(config.model.to_json_best_effort(sort_keys=True), size,
                             config.dataset.channels or 3)
  except (TypeError, ValueError, AttributeError, KeyError) as error:
    if not models.is_external(config.model.name):
      raise  # a registered model that cannot build is cifar_jax's bug: its traceback helps
    raise UserError(f'Model {config.model.name!r} (config.model.name) cannot be built on '
                    f'[1, {size}, {size}, {config.dataset.channels or 3}] images: '
                    f'{type(error).__name__}: {error}; check it against the model contract '
                    '(docs/development.md, "Adding a model").') from None
  modules = {path.rsplit('/', 1)[0] for path in paths}
  for module in config.l2_penalty_modules:
    if f'{module}/kernel' not in paths:
      raise UserError(f'config.l2_penalty_modules names {module!r}, which is no module with a '
                      f'kernel; the model has {sorted(modules)}.')
  labels = {}
  for path in paths:
    matches = [name for name, group in config.optimizer_groups.items()
               if any(fnmatch.fnmatchcase(path, pattern) for pattern in group.params)]
    if len(matches) > 1:
      raise UserError(f'Parameter {path} is in optimizer groups {matches}; make the groups\' '
                      'params patterns disjoint.')
    labels[path] = matches[0] if matches else 'default'
  for name, group in config.optimizer_groups.items():
    if name not in labels.values():
      raise UserError(f'config.optimizer_groups.{name} matches no parameter (patterns '
                      f'{list(group.params)}); the model has {paths}.')


@functools.lru_cache(maxsize=16)
def _parameter_paths(model_json: str, crop_size: int, channels: int) -> tuple[str, ...]:
  """'module/param' of every parameter of the model (traced for shapes, nothing computed)."""
  model = models.create_model(ml_collections.ConfigDict(json.loads(model_json)), num_classes=10)
  # Abstract arguments: nothing is computed and no backend starts (a multi-process run
  # joins its peers after this check, before JAX may touch a device).
  variables = jax.eval_shape(model.init, jax.ShapeDtypeStruct((2,), jnp.uint32),
                             jax.ShapeDtypeStruct((1, crop_size, crop_size, channels),
                                                  jnp.float32))
  return tuple(models.parameter_paths(variables['params']))
