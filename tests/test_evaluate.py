"""Exact precision@1: every example counted once, whatever the batch size."""

import os
import time

import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.config import validation
from cifar_jax.core import layout, parallel, summaries
from cifar_jax.core.errors import UserError
from cifar_jax.data.datasets import Split
from cifar_jax.evaluation import scoring
from cifar_jax.run import evaluate, train
from tests.conftest import tiny_config


class BrightPixelModel:
  """Predicts class k when flattened crop value k is the largest of the first 10."""

  @staticmethod
  def apply(variables, images, train=False):
    del variables, train
    return images.reshape(images.shape[0], -1)[:, :10]


def _split(num_examples, num_correct):
  rng = np.random.default_rng(0)
  predicted = rng.integers(0, 10, num_examples)
  images = np.zeros((num_examples, 32, 32, 3), np.uint8)
  flat_crop = images[:, 4:28, 4:28, :].reshape(num_examples, -1)
  flat_crop[np.arange(num_examples), predicted] = 255
  images[:, 4:28, 4:28, :] = flat_crop.reshape(num_examples, 24, 24, 3)
  labels = np.where(np.arange(num_examples) < num_correct, predicted, (predicted + 1) % 10)
  return Split(images, labels.astype(np.int32), tuple(str(i) for i in range(10)))


@pytest.mark.parametrize('num_devices,batch_size', [(1, 64), (4, 64), (4, 1000), (3, 7)])
def test_precision_counts_every_example_exactly_once(num_devices, batch_size):
  split = _split(250, num_correct=137)
  config = tiny_config()
  config.eval.batch_size = batch_size
  evaluator = scoring.Evaluator(config, split, BrightPixelModel(),
                                parallel.select_devices(num_devices))
  result = evaluator.score({'unused': jnp.zeros(())})
  assert result.count == 250
  assert result.precision == 137 / 250


def test_padded_batches_cover_each_index_once():
  indices, mask = scoring.padded_batches(10, 4, 3)  # per device 2, global 6
  assert indices.shape == (2, 3, 2)
  assert sorted(indices[mask].tolist()) == list(range(10))
  assert mask.sum() == 10


def _score(precision, loss=1.0):
  return scoring.Score(precision=precision, loss=loss, count=10, confusion=np.eye(2),
                       predictions=np.zeros(10))


def test_result_line_format():
  result = scoring.Result(tta='none', ema=(_score(0.8601),), raw=(_score(0.842),))
  assert result.line(2000) == 'step 2000, precision @ 1 = 0.860 (raw parameters: 0.842)'
  raw_first = scoring.Result(tta='none', ema=(_score(0.8601),), raw=(_score(0.842),),
                             headline='raw')
  assert raw_first.line(2000) == 'step 2000, precision @ 1 = 0.842 (EMA parameters: 0.860)'
  no_ema = scoring.Result(tta='mirror', ema=(_score(0.842),), raw=(_score(0.842),),
                          has_ema=False)
  assert no_ema.line(7) == 'step 7, precision @ 1 = 0.8420 (no EMA; TTA mirror)'
  assert set(result.scalars()) == {'precision', 'precision_raw', 'loss', 'loss_raw', 'count'}


def test_replica_statistics_by_hand():
  raw = tuple(_score(p) for p in (0.90, 0.91, 0.92))
  ema = tuple(_score(p, loss) for p, loss in ((0.93, 1.0), (0.94, 2.0), (0.95, 3.0), ))
  result = scoring.Result(tta='mirror_translate', ema=ema, raw=raw)
  # mean 0.94, std 0.01, 95% CI half-width t(0.975, 2) * 0.01 / sqrt(3) = 4.3027 * 0.005774.
  ci = 4.302653 * 0.01 / np.sqrt(3)
  assert result.line(426) == (f'step 426, precision @ 1 = 0.9400 ± {ci:.4f} (n=3, 95% CI; raw '
                              f'parameters: 0.9100 ± {ci:.4f}; TTA mirror_translate)')
  scalars = result.scalars()
  assert scalars['precision'] == pytest.approx(0.94) and scalars['loss'] == pytest.approx(2.0)
  assert [scalars[f'precision/replica_{r}'] for r in range(3)] == [0.93, 0.94, 0.95]
  assert [scalars[f'precision_raw/replica_{r}'] for r in range(3)] == [0.90, 0.91, 0.92]
  assert scalars['num_replicas'] == 3 and scalars['precision_std'] == pytest.approx(0.01)
  assert scalars['precision_ci95'] == pytest.approx(ci, rel=1e-6)
  assert (scalars['precision_min'], scalars['precision_max']) == (0.93, 0.95)
  without_ema = scoring.Result(tta='none', ema=raw, raw=raw, has_ema=False)
  assert without_ema.line(5) == f'step 5, precision @ 1 = 0.9100 ± {ci:.4f} (n=3, 95% CI; no EMA)'
  assert without_ema.scalars()['precision_min'] == 0.90  # the spread of the scored parameters


def _records(workdir):
  return summaries.read_records(os.path.join(workdir, 'eval', layout.METRICS))


def _trained(tmp_path, **overrides):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(**overrides), workdir, evaluate_in_process=False)
  return workdir


def test_run_once_scores_the_latest_checkpoint_once(tmp_path, capsys):
  workdir = _trained(tmp_path)
  results = evaluate.evaluate(tiny_config(**{'eval.run_once': True}), workdir)
  assert list(results) == [20] and results[20].count == 200
  capsys.readouterr()
  assert evaluate.evaluate(tiny_config(**{'eval.run_once': True}), workdir) == {}
  # Not silence: the step's precision from its record, and where that is.
  (line,) = capsys.readouterr().out.splitlines()
  assert line.endswith(f': step 20 was already scored: precision @ 1 = {results[20].precision:.3f} '
                       f'(raw parameters: {results[20].precision_raw:.3f}); its record is in '
                       f'{workdir}/eval/metrics.jsonl'), line
  records = _records(workdir)
  assert [(r['step'], r['status']) for r in records] == [(20, 'scored')]
  assert {'precision', 'precision_raw', 'loss', 'count', 'wall_time'} <= set(records[0])
  assert records[0]['tta'] == 'none'
  # Another test-time augmentation scores the step again, once.
  mirror = tiny_config(**{'eval.run_once': True, 'eval.tta': 'mirror'})
  assert list(evaluate.evaluate(mirror, workdir)) == [20]
  assert evaluate.evaluate(mirror, workdir) == {}
  assert [(r['step'], r['tta']) for r in _records(workdir)] == [(20, 'none'), (20, 'mirror')]


def test_scores_every_checkpoint_then_stops_after_the_final_one(tmp_path):
  workdir = _trained(tmp_path)
  started = time.time()
  results = evaluate.evaluate(tiny_config(), workdir)
  assert time.time() - started < 60  # it did not wait for eval.timeout_secs
  assert sorted(results) == [10, 20]
  # The in-process evaluator and the evaluator process agree.
  in_process = train.train_and_evaluate(tiny_config(), str(tmp_path / 'again'))
  again = _records(str(tmp_path / 'again'))
  assert again[-1]['precision'] == results[20].precision
  assert int(in_process.step) == 20
  records = _records(workdir)
  assert [r['step'] for r in records] == [10, 20]
  assert 'per_class_precision/class_0' in records[0]


def test_unreadable_checkpoint_is_skipped_with_a_warning(tmp_path, capsys):
  workdir = _trained(tmp_path)
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints', '10', 'state')):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'')
  # Without checksums (saved before they existed) the emptied files are read, and refused.
  os.remove(os.path.join(workdir, 'checkpoints', '10', 'sha256sums'))
  results = evaluate.evaluate(tiny_config(), workdir)
  assert list(results) == [20]
  assert [(r['step'], r['status']) for r in _records(workdir)] == [(10, 'unreadable'),
                                                                  (20, 'scored')]
  assert 'step 10, skipped: ' in capsys.readouterr().out


def test_checkpoints_deleted_before_they_were_seen_are_reported(tmp_path):
  workdir = _trained(tmp_path, keep_checkpoints=1, checkpoint_every_steps=5)
  results = evaluate.evaluate(tiny_config(), workdir)
  assert list(results) == [20]
  assert [(r['step'], r['status']) for r in _records(workdir)] == [
      (5, 'deleted'), (10, 'deleted'), (15, 'deleted'), (20, 'scored')]


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_checkpoints_saved_by_time_and_deleted_unseen_are_reported(tmp_path):
  # Saved by time only (steps 1000 apart): the evaluator learns the trainer's saved steps
  # from the latest checkpoint, not from a cadence.
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(checkpoint_every_steps=1000, checkpoint_every_secs=1,
                                       keep_checkpoints=2), workdir, evaluate_in_process=False,
                           on_log=lambda step, _: time.sleep(1.1) if step in (5, 10) else None)
  results = evaluate.evaluate(tiny_config(), workdir)
  records = [(r['step'], r['status']) for r in _records(workdir)]
  assert list(results) == [11, 20]
  assert records[-2:] == [(11, 'scored'), (20, 'scored')]
  assert (6, 'deleted') in records and all(status == 'deleted' for _, status in records[:-2])


@pytest.mark.slow  # (tier: docs/development.md#tests: waits on a clock)
def test_times_out_without_new_checkpoints(tmp_path):
  workdir = _trained(tmp_path)
  os.remove(os.path.join(workdir, 'train_complete'))  # as if the trainer were still running
  started = time.time()
  results = evaluate.evaluate(tiny_config(**{'eval.timeout_secs': 2.0, 'eval.poll_secs': 0.2}),
                              workdir)
  assert sorted(results) == [10, 20]
  assert 2.0 <= time.time() - started < 60


def test_summaries_include_images_when_tensorboard_is_there(tmp_path):
  pytest.importorskip('tensorboard')
  workdir = _trained(tmp_path)
  evaluate.evaluate(tiny_config(**{'eval.run_once': True}), workdir)
  assert [f for f in os.listdir(os.path.join(workdir, 'eval')) if f.startswith('events.out')]


def test_figures_render():
  confusion = np.array([[5, 1], [0, 4]])
  image = summaries.confusion_matrix_image(confusion, ['cat', 'dog'])
  assert image.ndim == 3 and image.shape[2] == 3 and 0 <= image.min() and image.max() <= 1
  grid = summaries.captioned_grid(np.zeros((3, 32, 32, 3), np.uint8), ['a/b', 'c/d', 'e/f'])
  assert grid.shape[0] > 32 * 3 and grid.shape[2] == 3


def test_evaluate_without_a_workdir_says_so(tmp_path, capsys):
  started = time.time()
  with pytest.raises(UserError, match='does not exist'):
    evaluate.evaluate(tiny_config(**{'eval.timeout_secs': 1.0, 'eval.poll_secs': 0.2}),
                      str(tmp_path / 'nope'))
  assert 1.0 <= time.time() - started < 30  # it waited for the trainer to create it
  assert capsys.readouterr().out.count('waiting for ') == 1  # and said so once
  with pytest.raises(UserError, match='does not exist'):  # --config.eval.run_once: at once
    evaluate.evaluate(tiny_config(**{'eval.run_once': True}), str(tmp_path / 'nope'))


# ----------------------------------------------------------------------------
# Test-time augmentation.


def _images(count=4, seed=0):
  return np.random.default_rng(seed).normal(size=(count, 6, 6, 3)).astype(np.float32)


def _first_columns(x):
  """A model that is not flip-invariant: logits from the leftmost pixels."""
  return x[:, :, 0, :].reshape(x.shape[0], -1)[:, :10]


def test_tta_of_a_flip_invariant_model_equals_no_tta():
  images = _images()
  invariant = lambda x: (x + x[:, :, ::-1]).reshape(x.shape[0], -1)[:, :10]  # noqa: E731
  np.testing.assert_allclose(scoring.tta_logits(invariant, images, 'mirror'),
                             scoring.tta_logits(invariant, images, 'none'), rtol=1e-6)
  assert not np.allclose(scoring.tta_logits(_first_columns, images, 'mirror'),
                         _first_columns(images))


def test_mirror_translate_by_hand():
  images = _images()
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  views = [images, padded[:, :6, :6], padded[:, 2:, 2:]]
  mirrored = [0.5 * _first_columns(v) + 0.5 * _first_columns(v[:, :, ::-1]) for v in views]
  expected = 0.5 * mirrored[0] + 0.25 * mirrored[1] + 0.25 * mirrored[2]
  np.testing.assert_allclose(scoring.tta_logits(_first_columns, images, 'mirror_translate'),
                             expected, rtol=1e-6)
  with pytest.raises(UserError, match='config.eval.tta'):
    validation.validate(tiny_config(**{'eval.tta': 'flip'}))


def test_a_step_deleted_while_listing_is_listed_again():
  class Manager:
    """Fails like Orbax when a step folder vanishes between listing and reading it."""

    def __init__(self, failures):
      self.failures, self.reloads = failures, 0

    def reload(self):
      self.reloads += 1
      if self.reloads <= self.failures:
        raise FileNotFoundError('checkpoints/400')

  manager = Manager(failures=2)
  evaluate.reload_steps(manager)
  assert manager.reloads == 3
  with pytest.raises(FileNotFoundError):
    evaluate.reload_steps(Manager(failures=5))
