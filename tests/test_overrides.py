"""Overrides by dotted path (the command line's and the notebook's) and what naming an extension
brings: cifar_jax/config/overrides.py and cifar_jax/config/extensions.py."""

import logging

import ml_collections
import pytest

from cifar_jax import models
from cifar_jax.config import extensions, overrides, validation
from cifar_jax.core.errors import UserError
from experiments import airbench94, base, resnet18, smoke
from tests.test_extensions import fork  # noqa: F401 (the fork's files on sys.path)

Text = overrides.Text


def _applied(config, **given):
  """`config` with `given` ({path with __ for dots: text}) applied as the command line does."""
  overrides.apply(config, {path.replace('__', '.'): Text(value) for path, value in given.items()})
  return config


@pytest.mark.parametrize('order', ['name first', 'field first'])
def test_an_outside_augmentation_brings_its_field_in_either_order(fork, order):  # noqa: F811
  given = {'augment.extra': Text("('fork_cutout:Cutout',)"), 'augment.cutout_size': Text('12')}
  if order == 'field first':
    given = dict(reversed(list(given.items())))
  config = smoke.get_config()
  overrides.apply(config, given)
  assert config.augment.extra == ('fork_cutout:Cutout',) and config.augment.cutout_size == 12
  validation.validate(config)


def test_a_named_extension_gets_its_declared_defaults_from_a_file_or_a_command_line(fork):  # noqa: F811
  config = smoke.get_config()  # as a recipe file that names the extensions and none of their fields
  config.augment.extra = ('fork_cutout:Cutout', 'cutout')
  config.eval.metrics = ('nll',)
  config.dataset.source = 'fork_source:Stripes'
  overrides.apply(config, {})
  assert config.augment.cutout_size == 16  # the in-package cutout's default wins: named last
  assert config.dataset.stripes_per_class == 16
  _applied(config, schedule__name='fork_schedule:one_cycle')
  assert dict(config.schedule) == {'name': 'fork_schedule:one_cycle', 'peak_fraction': 0.3}
  validation.validate(config)


def test_another_schedule_takes_only_its_own_fields():
  config = _applied(airbench94.get_config(), schedule__name='warmup_cosine',
                    schedule__warmup_epochs='2')
  assert dict(config.schedule) == {'name': 'warmup_cosine', 'warmup_epochs': 2.0}
  config = _applied(resnet18.get_config(), schedule__name='constant')
  assert dict(config.schedule) == {'name': 'constant'}
  validation.validate(config)


def test_an_augmentation_left_out_takes_its_fields_with_it(fork):  # noqa: F811
  config = smoke.get_config()
  _applied(config, augment__extra="('fork_cutout:Cutout',)", augment__cutout_size='5')
  _applied(config, augment__extra='()')
  assert 'cutout_size' not in config.augment
  assert 'translate' in config.augment  # the built-in ones always stay
  validation.validate(config)


def test_another_model_keeps_what_fits_it_and_sets_aside_the_old_modules(caplog):
  config = base.get_config()  # the tutorial net: L2 on local3/local4
  config.l2_penalty_modules = ('local3', 'local4')
  with caplog.at_level(logging.WARNING):
    _applied(config, model__name='resnet', model__width='8')
  # conv_features & co. left with the old net; the ResNet's own fields come at their defaults.
  assert dict(config.model) == {'name': 'resnet', 'width': 8,
                                **{k: v for k, v in models.default_fields('resnet').items()
                                   if k != 'width'}}
  assert config.l2_penalty_modules == ()
  (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert "replaces the recipe's tutorial_cnn" in warning and 'local3' in warning
  validation.validate(config)
  # Given, the modules are the user's: kept, and checked against the new model.
  config = _applied(base.get_config(), model__name='resnet',
                    l2_penalty_modules="('local3',)")
  with pytest.raises(UserError, match="l2_penalty_modules names 'local3'"):
    validation.validate(config)


def test_another_model_keeps_the_optimizer_groups_that_still_match():
  config = airbench94.get_config()
  config.optimizer_groups.convs = ml_collections.ConfigDict({'params': ('*conv*/kernel',),
                                                             'lr_multiplier': 0.5})
  _applied(config, model__name='resnet', model__width='4')
  # The whitening layer's groups leave with airbench94; the convolutions' match a ResNet's too.
  assert set(config.optimizer_groups) == {'convs'}
  validation.validate(config)


def test_a_field_the_named_model_lacks_is_one_sentence():
  with pytest.raises(UserError, match=r"--config.model.depth=3: model 'tutorial_cnn' has no "
                                      r"field 'depth' \(its fields: \["):
    _applied(smoke.get_config(), model__depth='3')


def test_evaluation_sets_and_optimizer_groups_are_created_by_their_fields():
  config = _applied(smoke.get_config(), eval__sets__fog__corruptions='fog',
                    eval__sets__fog__severities='(3, 5)', eval__sets__far__ood='true',
                    eval__sets__far__source='synthetic', eval__sets__far__seed='7',
                    optimizer_groups__head__params="('logits/*',)",
                    optimizer_groups__head__learning_rate='0.01')
  assert config.eval.sets.fog.to_dict() == {'corruptions': 'fog', 'severities': (3, 5)}
  assert config.eval.sets.far.to_dict() == {'ood': True, 'source': 'synthetic', 'seed': 7}
  assert config.optimizer_groups.head.to_dict() == {'params': ('logits/*',),
                                                    'learning_rate': 0.01}
  validation.validate(config)
  with pytest.raises(UserError, match=r"an evaluation set has no field 'fogginess'"):
    _applied(smoke.get_config(), eval__sets__fog__fogginess='3')


@pytest.mark.parametrize('path, text, value', [
    ('eval.run_once', 'true', True), ('eval.run_once', 'False', False),
    ('learning_rate', '1', 1.0), ('num_train_steps', '12', 12),
    ('eval.metrics', 'nll,ece', ('nll', 'ece')), ('eval.metrics', "('nll',)", ('nll',)),
    ('dataset.image_size', '(64, 48)', (64, 48)), ('dataset.image_size', '40', 40),
    ('dataset.data_dir', '/data/tfds', '/data/tfds'), ('dataset.name', '123', '123'),
])
def test_text_is_read_by_the_type_of_its_field(path, text, value):
  config = smoke.get_config()
  overrides.apply(config, {path: Text(text)})
  assert extensions.get_path(config, path) == value
  assert type(extensions.get_path(config, path)) is type(value)


@pytest.mark.parametrize('path, text, message', [
    ('learning_rat', '3', r'the config has no field config.learning_rat; did you mean '
                          r'config.learning_rate\?'),
    ('eval.run_once', 'maybe', r'--config.eval.run_once=maybe: a flag takes true or false'),
    ('augment', '3', r'config.augment is a group of fields'),
    ('num_train_steps', '1.5', r'invalid literal for int'),
    ('sweep.learning_rate', '0.1', r'a sweep field takes a tuple of values'),
    ('optimizer_groups.head.speed', '1', r"an optimizer group has no field 'speed'"),
])
def test_a_wrong_override_is_one_sentence(path, text, message):
  with pytest.raises(UserError, match=message):
    overrides.apply(smoke.get_config(), {path: Text(text)})


def test_notebook_values_are_set_as_given():
  config = smoke.get_config()
  overrides.apply(config, {'eval.metrics': ['nll'], 'sweep.learning_rate': (0.1, 0.2),
                           'eval.sets.noise': {'source': 'synthetic', 'ood': True}},
                  where='override ')
  assert config.eval.metrics == ('nll',) and config.sweep.learning_rate == (0.1, 0.2)
  assert isinstance(config.eval.sets.noise, ml_collections.ConfigDict)
  with pytest.raises(UserError, match=r"^override learning_rat=3: the config has no field"):
    overrides.apply(config, {'learning_rat': 3}, where='override ')


def test_another_model_takes_its_own_defaults_not_the_old_models():
  """A field both models have, left at the old model's default by the recipe, takes the new
  model's default; one the recipe set is kept."""
  config = _applied(resnet18.get_config(), model__name='preact_resnet')
  assert config.model.depth == 18  # the recipe's (ResNet's default too, and PreAct's)
  config = resnet18.get_config()
  config.model.width = 32  # set by the recipe, away from the ResNet's default (64)
  _applied(config, model__name='wide_resnet')
  assert 'width' not in config.model  # WRN has no width: left with the ResNet
  assert config.model.depth == models.default_fields('wide_resnet')['depth']
