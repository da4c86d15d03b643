"""The one config check: every rate, fraction, size, count, name and combination; renamed fields."""

import glob
import importlib
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import pytest

from cifar_jax import experiment
from cifar_jax.config import validation
from cifar_jax.core import fields as fields_lib
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets
from cifar_jax.run import train
from cifar_jax.training import builder
from cifar_jax.workdir import checkpoints
from tests.conftest import REPO_ROOT, tiny_airbench_config, tiny_config

BEFORE_RENAME = os.path.join(REPO_ROOT, 'tests', 'data', 'configs_before_rename.json')


def test_every_experiment_file_is_valid():
  for name in ('base', 'smoke', 'cifar10', 'cifar10_jpeg', 'cifar10_jpeg_modern', 'svhn',
               'airbench94', 'airbench94_jpeg', 'airbench94_smoke', 'airbench94_muon',
               'airbench94_muon_jpeg', 'exercise_one_device', 'exercise_two_devices'):
    validation.validate(importlib.import_module(f'experiments.{name}').get_config())


# (dotted field, bad value, what the one sentence says). Fields of the tutorial net's config.
TUTORIAL_MISTAKES = [
    ('seed', -1, r'config.seed is -1; it must be at least 0'),
    ('dataset.source', 'hdf5', r"Unknown data source 'hdf5' \(config.dataset.source\)"),
    ('dataset.train_split', 'train[::2]', r"Cannot parse split 'train\[::2\]'"),
    ('dataset.eval_split', 'validation', r'Synthetic data has splits "train" and "test"'),
    ('dataset.synthetic_train_size', 0, r'synthetic_train_size is 0; it must be at least 1'),
    ('dataset.synthetic_num_classes', 1, r'synthetic_num_classes is 1; it must be at least 2'),
    ('dataset.synthetic_image_size', 30, r'multiple of 4'),
    ('dataset.image_size', (64, 0), r'config.dataset.image_size is \(64, 0\); use 0'),
    ('dataset.image_size', (64, 48, 3), r'config.dataset.image_size is \(64, 48, 3\)'),
    ('dataset.resize_method', 'nearest', r"Unknown config.dataset.resize_method 'nearest'"),
    ('dataset.resize_aspect', 'fit', r"Unknown config.dataset.resize_aspect 'fit'"),
    ('eval_resize', 16, r'config.eval_resize is 16, smaller than config.crop_size \(24\)'),
    ('eval_resize', -1, r'config.eval_resize is -1; use 0 \(no resize\)'),
    ('augment.crop_scale', (0.5, 0.2), r'config.augment.crop_scale is \(0.5, 0.2\); use'),
    ('augment.crop_scale', (0.0, 1.0), r'0 < low <= high <= 1'),
    ('augment.crop_ratio', (2.0, 0.5), r'config.augment.crop_ratio is \(2.0, 0.5\)'),
    ('channel_std', (0.2, 0.0, 0.2), r'every standard deviation must be positive'),
    ('channel_std', (0.2, 0.2), r'config.channel_std is .*a tuple of 3 numbers'),
    ('augment.translate', -1, r'config.augment.translate is -1; use 0 or a number of pixels'),
    ('augment.padding_mode', 'zeros',
     r"Unknown config.augment.padding_mode 'zeros'; use one of \['reflect', 'constant'\]"),
    ('augment.max_brightness_delta', -5.0, r'max_brightness_delta is -5.0; it must be at least 0'),
    ('augment.contrast_upper', 0.1, r'contrast_upper is 0.1; it must be at least'),
    ('model.conv_features', 0, r'config.model.conv_features is 0; it must be at least 1'),
    ('model.formulation', 'turbo', r"Unknown config.model.formulation 'turbo'"),
    ('model_init_examples', 0, r'model_init_examples is 0; it must be at least 1'),
    ('num_devices', 0, r'config.num_devices is 0; use -1 \(all local devices\) or N >= 1'),
    ('per_device_batch_size', 0, r'per_device_batch_size is 0; give the batch one way'),
    ('keep_checkpoints', 0, r'keep_checkpoints is 0; it must be at least 1'),
    ('histogram_sample_size', 0, r'histogram_sample_size is 0; it must be at least 1'),
    ('input_image_grid_size', 0, r'input_image_grid_size is 0; it must be at least 1'),
    ('optimizer', 'adam', r"Unknown config.optimizer 'adam'; use one of"),
    ('learning_rate', -0.1, r'config.learning_rate is -0.1; it must be at least 0'),
    ('learning_rate', float('nan'), r'config.learning_rate is nan; it must be a finite number'),
    ('momentum', 1.0, r'config.momentum is 1.0; it must be less than 1'),
    ('hyperparameter_form', 'scaled', r"Unknown config.hyperparameter_form 'scaled'; use one of "
                                      r"\['plain', 'decoupled', 'pytorch'\]"),
    ('weight_decay', -1e-4, r'config.weight_decay is -0.0001; it must be at least 0'),
    ('schedule.decay_factor', 0.0, r'schedule.decay_factor is 0.0; it must be greater than 0'),
    ('schedule.epochs_per_decay', -1.0, r'epochs_per_decay is -1.0; it must be greater than 0'),
    ('label_smoothing', 1.5, r'config.label_smoothing is 1.5; it must be less than 1'),
    ('label_smoothing', -0.1, r'config.label_smoothing is -0.1; it must be at least 0'),
    ('l2_penalty', -0.004, r'config.l2_penalty is -0.004; it must be at least 0'),
    ('l2_penalty_modules', ('local3', 'local9'), r"l2_penalty_modules names 'local9'"),
    ('lookahead.every_steps', -1, r'use 0 \(no lookahead\) or a positive number of steps'),
    ('lookahead.decay_base', 1.5, r'lookahead.decay_base is 1.5; it must be at most 1'),
    ('ema.kind', 'polyak', r"Unknown config.ema.kind 'polyak'"),
    ('ema.decay', 1.0, r'config.ema.decay is 1.0; it must be less than 1'),
    ('ema.decay', 0.0, r'config.ema.decay is 0.0; it must be greater than 0'),
    ('collective_timeout_secs', -1.0, r'collective_timeout_secs is -1.0; use 0 \(never\)'),
    ('log_every_steps', 0, r'config.log_every_steps is 0; it must be at least 1'),
    ('checkpoint_every_steps', 0, r'checkpoint_every_steps is 0; it must be at least 1'),
    ('eval_every_steps', -1, r'eval_every_steps is -1; use 0 \(only at the end\)'),
    ('eval.batch_size', 0, r'config.eval.batch_size is 0; it must be at least 1'),
    ('eval.headline', 'best', r"Unknown config.eval.headline 'best'; use one of \['ema', 'raw'\]"),
    ('eval.poll_secs', 0.0, r'config.eval.poll_secs is 0.0; it must be greater than 0'),
    ('eval.timeout_secs', -1.0, r'config.eval.timeout_secs is -1.0; it must be at least 0'),
    ('eval.num_misclassified_images', -1, r'num_misclassified_images is -1; it must be at least'),
    ('eval.run_once', 'yes', r"config.eval.run_once is 'yes'; it must be True or False"),
    ('num_train_steps', 2.5, r'config.num_train_steps is 2.5; it must be a whole number'),
    ('muon.ns_steps', 0, r'config.muon.ns_steps is 0; it must be at least 1'),
    ('muon.ns_coefficients', (1.0, 2.0), r'muon.ns_coefficients is .*a tuple of 3 numbers'),
]


def _with(config, field, value):
  config = ml_collections.ConfigDict(config.to_dict())  # a field's type may change here
  *parents, leaf = field.split('.')
  target = config
  for parent in parents:
    target = target[parent]
  with target.ignore_type():
    target[leaf] = value
  return config


@pytest.mark.parametrize('field, value, message', TUTORIAL_MISTAKES,
                         ids=[f'{field}={value}' for field, value, _ in TUTORIAL_MISTAKES])
def test_each_out_of_range_or_unknown_value_is_one_sentence(field, value, message):
  with pytest.raises(UserError, match=message) as raised:
    validation.validate(_with(tiny_config(), field, value))
  assert '\n' not in str(raised.value) and str(raised.value).endswith('.')


AIRBENCH_MISTAKES = [
    ('model.widths', (8, 0, 16), r'config.model.widths is \(8, 0, 16\); every width'),
    ('model.batch_norm_momentum', 1.0, r'batch_norm_momentum is 1.0; it must be less than 1'),
    ('model.head_init', 'zeros', r"Unknown config.model.head_init 'zeros'"),
    ('schedule.warmup_fraction', 1.5, r'schedule.warmup_fraction is 1.5; it must be at most 1'),
    ('optimizer_groups.norm_biases.lr_multiplier', 0.0, r'lr_multiplier is 0.0; it must be'),
    ('optimizer_groups.whiten_bias.train_epochs', -3.0, r'train_epochs is -3.0; it must be'),
    ('optimizer_groups.whiten_bias.schedule_over', 'epochs', r'schedule_over is .epochs.'),
    ('loss_reduction', 'max', r"Unknown config.loss_reduction 'max'"),
    ('augment.flip_left_right', False, r'alternating_flip needs config.augment.flip_left_right'),
]


@pytest.mark.parametrize('field, value, message', AIRBENCH_MISTAKES,
                         ids=[f'{field}={value}' for field, value, _ in AIRBENCH_MISTAKES])
def test_airbench_fields_are_checked_too(field, value, message):
  with pytest.raises(UserError, match=message):
    validation.validate(_with(tiny_airbench_config(), field, value))


def test_a_schedule_takes_exactly_its_own_fields():
  config = tiny_config()
  config.schedule.name = 'warmup_cosine'  # as --config.schedule.name=warmup_cosine would
  with pytest.raises(UserError, match=r"config.schedule 'warmup_cosine' takes the fields "
                                      r"\['warmup_epochs'\], not \['decay_factor', "):
    validation.validate(config)
  config.schedule = ml_collections.ConfigDict({'name': 'warmup_cosine', 'warmup_epochs': 0.5})
  validation.validate(config)


def test_unknown_and_missing_fields():
  config = tiny_config()
  config.learning_rat = 0.1  # a typo in a config file
  with pytest.raises(UserError, match=r'config.learning_rat is not a field cifar_jax reads'):
    validation.validate(config)
  config = tiny_config()
  del config['eval']['poll_secs']
  with pytest.raises(UserError, match=r'The config has no field config.eval.poll_secs'):
    validation.validate(config)


def test_a_config_file_with_the_old_names_is_told_the_new_ones():
  with open(BEFORE_RENAME) as f:
    old = ml_collections.ConfigDict(json.load(f)['airbench94_muon'])
  with pytest.raises(UserError) as raised:
    validation.validate(old)
  message = str(raised.value)
  for renamed in ('config.lr_schedule is now config.schedule.name',
                  'config.sgd_weight_decay is now config.weight_decay',
                  'config.weight_decay (the L2 term in the loss) is now config.l2_penalty',
                  'config.optimizer_groups.filters.sgd_weight_decay is now '
                  'config.optimizer_groups.filters.weight_decay'):
    assert renamed in message


def test_configs_saved_before_the_renames_read_as_todays():
  """Every experiment keeps its numbers: the old file's config, renamed, is today's file's."""
  with open(BEFORE_RENAME) as f:
    before = json.load(f)
  for name, saved in before.items():
    today = json.loads(importlib.import_module(f'experiments.{name}').get_config()
                       .to_json_best_effort())
    upgraded = validation.upgrade_saved_config(saved)
    if 'formulation' not in saved['model']:  # a BatchNorm network, saved before the fast one:
      assert upgraded['model'].pop('formulation') == 'reference', name  # what it trained with
      assert today['model'].pop('formulation') == 'fast', name
    # The batch, given per device then and globally by some recipes now: the same on one device.
    for config in (upgraded, today):
      config['batch on one device'] = config.pop('batch_size') or config['per_device_batch_size']
      del config['per_device_batch_size']
    assert upgraded == today, name
  current = json.loads(tiny_config().to_json_best_effort())
  assert validation.upgrade_saved_config(current) is current  # nothing to rename


def test_a_workdir_written_before_the_renames_resumes_and_loads(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(num_train_steps=10)
  train.train_and_evaluate(config, workdir, evaluate_in_process=False)
  # Its checkpoint's config as the code before the renames wrote it.
  with open(BEFORE_RENAME) as f:
    old = json.load(f)['smoke']
  tiny = json.loads(config.to_json_best_effort())
  for group in ('dataset', 'model', 'eval'):
    old[group].update(tiny[group])
  for field in ('per_device_batch_size', 'num_devices', 'num_train_steps', 'log_every_steps',
                'checkpoint_every_steps', 'histogram_every_steps', 'histogram_sample_size',
                'input_image_grid_size', 'compilation_cache_dir'):
    old[field] = tiny[field]
  with open(os.path.join(checkpoints.checkpoint_dir(workdir), '10', 'config', 'metadata'),
            'w') as f:
    json.dump(old, f)
  # Such a WORKDIR predates checkpoint checksums too.
  os.remove(os.path.join(checkpoints.checkpoint_dir(workdir), '10', checkpoints.CHECKSUM_FILE))
  run = experiment.load_checkpoint(workdir)
  assert run.config.schedule.name == 'staircase_exponential' and run.config.l2_penalty == 0.004
  assert json.loads(run.config.to_json_best_effort()) == tiny
  resumed = train.train_and_evaluate(tiny_config(num_train_steps=12), workdir,
                                     evaluate_in_process=False)
  assert int(resumed.step) == 12
  # A real change is named; the renames are not changes.
  shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(workdir), '12'))
  with pytest.raises(UserError, match=r'\(config changes: model.local3_features: 16 -> 32; '
                                      r'num_train_steps: 10 -> 12\)'):
    train.train_and_evaluate(tiny_config(num_train_steps=12, **{'model.local3_features': 32}),
                             workdir)


def test_a_valid_config_is_checked_without_starting_jax():
  # main checks the config before a multi-process run joins its peers, which must come
  # before anything starts a JAX backend.
  script = ('import sys; sys.path.insert(0, ".")\n'
            'from cifar_jax.config import validation\n'
            'from experiments import airbench94, cifar10\n'
            'validation.validate(cifar10.get_config())\n'
            'validation.validate(airbench94.get_config())\n'
            'from jax._src import xla_bridge\n'
            'print("backends:", sorted(xla_bridge._backends))\n')
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'backends: []' in result.stdout


def test_each_field_has_one_owner_the_module_that_reads_it():
  """The schema is what the modules declare (found by walking the package, not listed): every
  module with FIELDS is in it, no path twice, and a second owner of a path is refused."""
  import pkgutil  # pylint: disable=g-import-not-at-top

  import cifar_jax  # pylint: disable=g-import-not-at-top
  from cifar_jax.config import schema  # pylint: disable=g-import-not-at-top
  sections = {section.owner: section for section in schema.sections()}
  for layer in cifar_jax.LAYERS:
    for info in pkgutil.walk_packages([os.path.join(REPO_ROOT, 'cifar_jax', layer)],
                                      f'cifar_jax.{layer}.'):
      module = importlib.import_module(info.name)
      if isinstance(getattr(module, 'FIELDS', None), dict):
        assert info.name in sections and sections[info.name].fields is module.FIELDS, info.name
  for entry_point in glob.glob(os.path.join(REPO_ROOT, 'cifar_jax', '*.py')):
    with open(entry_point) as source:
      assert 'FIELDS' not in source.read(), entry_point  # the walk does not import them
  paths = [path for section in sections.values() for path in section.fields]
  assert len(paths) == len(set(paths))
  # The cadences are declared where they are read, the layers below the config's check included.
  assert 'keep_checkpoints' in sections['cifar_jax.workdir.checkpointer'].fields
  assert 'eval_every_steps' in sections['cifar_jax.run.actions'].fields
  with pytest.raises(AssertionError, match=r"\['keep_checkpoints'\] are declared by "
                                           r'cifar_jax.workdir.checkpointer and a_fork'):
    fields_lib.declare('a_fork', {'keep_checkpoints': fields_lib.Field(3, fields_lib.integer(1))})


def test_the_base_config_is_built_from_the_declarations_alone():
  """experiments/base.py is the declared defaults (one place for a default), a fresh config each
  call, with the default model's own fields and the fields of several types kept open."""
  from cifar_jax.config import schema  # pylint: disable=g-import-not-at-top
  from experiments import base
  first = base.get_config()
  first.augment.crop_scale = (0.5, 1.0)
  first.dataset.image_size = (64, 48)  # N or (height, width): not held to its default's type
  assert base.get_config().augment.crop_scale == (0.08, 1.0)
  assert dict(base.get_config().model) == {'name': 'tutorial_cnn', 'conv_features': 64,
                                           'local3_features': 384, 'local4_features': 192,
                                           'formulation': 'fast', 'dtype': 'float32'}
  described = schema.describe()
  assert all(f'config.{path} = ' in described for path in schema.declared_fields())
  declared = schema.declared_fields()
  config = base.get_config().to_dict()
  listed = {}
  for path in declared:
    value = config
    for part in path.split('.'):
      assert part in value, f'config.{path} is declared but experiments/base.py lacks it'
      value = value[part]
    listed[path] = value
  covered = set(declared)
  for leaf in fields_lib.leaf_paths(config):
    assert any(leaf == path or leaf.startswith(path + '.') for path in covered), (
        f'config.{leaf} is in experiments/base.py but no module declares it')
  for path, field in declared.items():
    if path in ('model', 'dataset.source'):
      continue  # (base.py names the tutorial's model; the others are the declared defaults)
    assert listed[path] == field.default, path


@pytest.mark.parametrize('field, value', [('crop_size', 40), ('dataset.image_size', 16)])
def test_a_crop_larger_than_the_images_is_refused_once_when_the_data_are_loaded(field, value):
  """The crop against the images is a rule of the data (one place: `Augmentation.check`), even
  where the config alone fixes the images' size."""
  config = tiny_config(**{field: value})
  validation.validate(config)
  split = datasets.load_split(config.dataset, config.dataset.train_split)
  with pytest.raises(UserError, match=r'config.crop_size=\d+ is larger than the training images'):
    builder.build(config, split)
