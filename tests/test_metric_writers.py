"""metric_writers: clu's interface, the built-in writers, and writers from outside in a run."""

import inspect
import json
import os

import jax
import numpy as np
import pytest

from cifar_jax.config import extensions, validation
from cifar_jax.core import layout, metric_writers, summaries
from cifar_jax.core.errors import UserError
from cifar_jax.run import train
from tests.conftest import tiny_config


class RecordingWriter(metric_writers.MetricWriter):
  """A writer from outside (named 'tests.test_metric_writers:RecordingWriter'): every call as a
  JSON line in LOGDIR/recorded.jsonl (the run imports this module under its own name)."""

  def __init__(self, logdir):
    self.path = os.path.join(logdir, 'recorded.jsonl')

  def _keep(self, *call):
    with open(self.path, 'a') as f:
      f.write(json.dumps(call, default=float) + '\n')

  def write_summaries(self, step, values, metadata=None):
    self._keep('summaries', step, sorted(values))

  def write_scalars(self, step, scalars):
    self._keep('scalars', step, {k: float(v) for k, v in scalars.items()})

  def write_images(self, step, images):
    self._keep('images', step, {k: np.shape(v) for k, v in images.items()})

  def write_videos(self, step, videos):
    self._keep('videos', step)

  def write_audios(self, step, audios, *, sample_rate):
    self._keep('audios', step)

  def write_texts(self, step, texts):
    self._keep('texts', step, dict(texts))

  def write_histograms(self, step, arrays, num_buckets=None):
    self._keep('histograms', step, sorted(arrays))

  def write_hparams(self, hparams):
    self._keep('hparams', dict(hparams))

  def flush(self):
    pass

  def close(self):
    self._keep('close')


def _recorded(logdir):
  with open(os.path.join(logdir, 'recorded.jsonl')) as f:
    return [json.loads(line) for line in f]


class NoHistograms:
  """Breaks the contract: not every method of the interface."""

  def __init__(self, logdir):
    del logdir

  def write_scalars(self, step, scalars):
    del step, scalars


class FailsToWrite(RecordingWriter):
  def write_scalars(self, step, scalars):
    raise ValueError('the server said no')


class FailsToStart:
  def __init__(self, logdir):
    raise RuntimeError(f'no server for {os.path.basename(logdir)}')


OUTSIDE = 'tests.test_metric_writers:RecordingWriter'


def test_the_interface_is_clus_method_for_method():
  clu_interface = pytest.importorskip('clu.metric_writers.interface')
  theirs, ours = clu_interface.MetricWriter, metric_writers.MetricWriter
  assert ours.__abstractmethods__ == theirs.__abstractmethods__
  for name in theirs.__abstractmethods__:
    mine = inspect.signature(getattr(ours, name)).parameters
    clus = inspect.signature(getattr(theirs, name)).parameters
    assert [(p.name, p.kind, p.default) for p in mine.values()] == [
        (p.name, p.kind, p.default) for p in clus.values()], name
  # So clu's writers are writers here: a run's MultiWriter takes one as it is.
  clu_writers = pytest.importorskip('clu.metric_writers')
  logged = clu_writers.LoggingWriter()
  metric_writers.MultiWriter([logged]).write_scalars(1, {'loss': 1.0}, record={'x': 'y'})


def _with_writers(config, *names):
  with config.unlocked():
    config.summaries.writers = names
  extensions.complete(config)
  return config


@pytest.mark.slow  # two training runs (tier: docs/development.md#tests)
def test_extra_writers_change_no_bit_and_get_every_scalar_of_the_json_lines(tmp_path):
  """An outside writer gets what metrics.jsonl gets, images, histograms and the config; the
  run's state is bit for bit that of a run with the JSON lines alone."""
  plain = train.train_and_evaluate(_with_writers(tiny_config(), 'jsonl'), str(tmp_path / 'a'))
  workdir = str(tmp_path / 'b')
  config = _with_writers(tiny_config(), 'jsonl', 'tensorboard', OUTSIDE)
  written = train.train_and_evaluate(config, workdir)
  jax.tree.map(np.testing.assert_array_equal, written, plain)

  for logdir in (workdir, layout.path(workdir, layout.EVAL)):
    calls = _recorded(logdir)
    scalars = {(c[1], k): v for c in calls if c[0] == 'scalars' for k, v in c[2].items()}
    records = summaries.read_records(os.path.join(logdir, layout.METRICS))
    assert records
    for record in records:
      for key, value in record.items():
        if key not in ('step', 'wall_time') and isinstance(value, float):  # (a record's)
          assert scalars[(record['step'], key)] == value, (logdir, key)
    (hparams,) = [c[1] for c in calls if c[0] == 'hparams']
    assert hparams['learning_rate'] == config.learning_rate
    assert hparams['summaries.writers'] == f'["jsonl", "tensorboard", "{OUTSIDE}"]'
    assert calls[-1] == ['close']
  kinds = {c[0] for c in _recorded(workdir)}
  assert {'images', 'histograms'} <= kinds
  eval_images = [c[2] for c in _recorded(layout.path(workdir, layout.EVAL))
                 if c[0] == 'images']
  assert {'confusion_matrix', 'misclassified'} <= set(eval_images[-1])


def test_an_outside_writer_named_in_the_config_gets_the_run_and_its_config(tmp_path):
  config = _with_writers(tiny_config(), 'jsonl', OUTSIDE)
  validation.validate(config)
  logdir = str(tmp_path / 'run')
  with summaries.create_writer(logdir, True, config) as writer:
    writer.write_scalars(7, {'loss': 2.25}, record={'status': 'x'})
  hparams, scalars, close = _recorded(logdir)
  assert hparams[0] == 'hparams' and hparams[1]['model.name'] == config.model.name
  assert (scalars, close) == (['scalars', 7, {'loss': 2.25}], ['close'])
  assert summaries.read_records(os.path.join(logdir, layout.METRICS)) == [
      {'step': 7, 'loss': 2.25, 'status': 'x'}]


def test_tensorboard_reads_back_texts_and_hyperparameters(tmp_path):
  event_accumulator = pytest.importorskip(
      'tensorboard.backend.event_processing.event_accumulator')
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top
  writer = metric_writers.TensorBoardWriter(str(tmp_path))
  writer.write_hparams({'learning_rate': 0.1, 'model.name': 'tutorial_cnn', 'ema.enabled': True})
  writer.write_texts(2, {'note': 'a line'})
  writer.write_histograms(3, {'w': np.arange(10.0)}, num_buckets={'w': 5})
  writer.close()
  events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={
      event_accumulator.TENSORS: 0, event_accumulator.HISTOGRAMS: 0})
  events.Reload()
  (text,) = events.Tensors('note')
  assert (text.step, text.tensor_proto.string_val) == (2, [b'a line'])
  (histogram,) = events.Histograms('w')
  assert len(histogram.histogram_value.bucket) == 5
  content = events.PluginTagToContent('hparams')
  (data,) = content.values()
  info = plugin_data_pb2.HParamsPluginData.FromString(data).session_start_info
  assert info.hparams['learning_rate'].number_value == 0.1
  assert info.hparams['model.name'].string_value == 'tutorial_cnn'
  assert info.hparams['ema.enabled'].bool_value is True


@pytest.mark.parametrize('writers, says', [
    (('tensorboard',), "keep 'jsonl' among them"),
    (('jsonl', 'jsonl'), 'name each writer once'),
    (('jsonl', 'neptune'), "Unknown summary writer 'neptune'"),
    (('jsonl', 'no_such_module_here:Writer'), "'no_such_module_here' cannot be imported"),
])
def test_a_wrong_list_of_writers_is_one_sentence(writers, says):
  with pytest.raises(UserError, match=says):
    validation.validate(_with_writers(tiny_config(), *writers))


@pytest.mark.parametrize('name, says', [
    ('NoHistograms', "has no close, flush, write_audios.*give it clu's MetricWriter interface"),
    ('FailsToStart', r'failed to start \(RuntimeError: no server for run\); fix it or leave'),
])
def test_an_outside_writer_that_breaks_its_contract_is_one_sentence(tmp_path, name, says):
  config = _with_writers(tiny_config(), 'jsonl', f'tests.test_metric_writers:{name}')
  validation.validate(config)
  with pytest.raises(UserError, match=says):
    summaries.create_writer(str(tmp_path / 'run'), True, config)


def test_an_outside_writer_that_fails_to_write_is_one_sentence(tmp_path):
  config = _with_writers(tiny_config(), 'jsonl', 'tests.test_metric_writers:FailsToWrite')
  writer = summaries.create_writer(str(tmp_path), True, config)
  with pytest.raises(UserError, match=r'The summary writer tests.test_metric_writers:FailsToWrite '
                     r'failed in write_scalars \(ValueError: the server said no\); fix it or '
                     'leave it out of config.summaries.writers'):
    writer.write_scalars(1, {'loss': 1.0})


def test_the_json_lines_take_a_record_and_the_others_only_scalars(tmp_path):
  lines = metric_writers.JsonLinesWriter(str(tmp_path / 'metrics.jsonl'))
  other = RecordingWriter(str(tmp_path))
  writer = metric_writers.MultiWriter([lines, other])
  writer.write_scalars(4, {'precision': np.float32(0.5)}, record={'status': 'scored'})
  writer.write_record({'step': 5, 'status': 'skipped'})
  assert summaries.read_records(lines.path) == [
      {'step': 4, 'precision': 0.5, 'status': 'scored'}, {'step': 5, 'status': 'skipped'}]
  assert _recorded(str(tmp_path)) == [['scalars', 4, {'precision': 0.5}]]


def test_flat_hparams_are_dotted_names_of_plain_values():
  assert metric_writers.flat_hparams(
      {'a': 1, 'b': {'c': (1, 2), 'd': None, 'e': {'f': 'x'}}, 'g': True}) == {
          'a': 1, 'b.c': '[1, 2]', 'b.d': 'null', 'b.e.f': 'x', 'g': True}
