"""Weights & Biases as a writer of the MetricWriter interface (`config.summaries.writers`).

    --config.summaries.writers=jsonl,tensorboard,wandb    (pip install 'cifar_jax[wandb]')

How a run maps onto W&B, as TensorBoard sees it (WORKDIR and WORKDIR/eval are two of its runs):

* The trainer (WORKDIR) and the evaluator (WORKDIR/eval) write W&B runs of `job_type` 'train'
  and 'eval', in the group `config.summaries.wandb_group` (default: WORKDIR's name). They are
  separate runs because they may be separate processes, and W&B lets one process write a run.
* With replicas or a sweep, every network trained together (run k: sweep point k // R, seed
  k % R) is a W&B run of its own, with its own config (the point's values, its seed): its
  figures under their plain names ('precision' for 'precision/replica_k'), and the figures of
  all the runs (their mean, CI, each point's mean) under 'group/'. W&B's group view then draws
  the runs' spread itself. A single run logs every figure under its plain name.
* Images and histograms are the first run's (as in TensorBoard), in its W&B run.
* Steps: each W&B run logs the trainer's step as the metric 'step', the x axis of every chart
  (W&B's own step only grows; a resumed run repeats the steps since its last checkpoint).
* A restart continues the same W&B runs: their ids are kept in LOGDIR/wandb/runs.json.

W&B reads its own settings (WANDB_MODE=offline, WANDB_API_KEY, WANDB_DIR, ...). Without the
package, or without a login in online mode, or where W&B cannot start, the run trains all the
same, with one warning line.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import os
import secrets
from typing import Any

from absl import logging
import numpy as np

from cifar_jax.core import fields as spec
from cifar_jax.core import metric_writers, sweeps

WANDB_FIELDS = {  # registered with the writer (summaries.WRITERS), in config.summaries
    'wandb_project': spec.Field('cifar_jax', spec.text(), 'the W&B project of the runs'),
    'wandb_entity': spec.Field('', spec.text(), "the W&B team or user ('': the login's own)"),
    'wandb_group': spec.Field('', spec.text(), "the W&B group of the runs ('': WORKDIR's name)"),
}
RUN_IDS = 'runs.json'  # LOGDIR/wandb/runs.json: the W&B run ids, for a restart to continue
GROUP_PREFIX = 'group/'  # where a run of several logs the figures of all of them

_warned: set[str] = set()


def _warn_once(text: str) -> None:
  if text not in _warned:
    _warned.add(text)
    logging.warning('%s', text)


def _mode() -> str | None:
  """W&B's mode as its environment says now (None: its default, online). Read at every start:
  W&B keeps the settings of its first use in a process (a notebook's earlier cell)."""
  if os.environ.get('WANDB_DISABLED', '').lower() in ('true', '1', 'yes'):
    return 'disabled'
  mode = os.environ.get('WANDB_MODE', '').lower()
  return {'dryrun': 'offline', 'run': 'online'}.get(mode, mode) or None


def _run_ids(folder: str, count: int) -> list[str]:
  """The W&B ids of `count` runs: kept from an earlier start of the run, else new."""
  path = os.path.join(folder, RUN_IDS)
  ids: list[str] = []
  if os.path.exists(path):
    try:
      with open(path) as f:
        ids = list(json.load(f)['ids'])
    except (OSError, ValueError, KeyError, TypeError):
      ids = []  # unreadable: new runs (the old ones stay in W&B as they are)
  ids += [secrets.token_hex(4) for _ in range(count - len(ids))]
  os.makedirs(folder, exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump({'ids': ids}, f)
  os.replace(path + '.tmp', path)
  return ids[:count]


def run_configs(config) -> list[dict[str, Any]]:
  """Each run's own config, flat (dotted names): its sweep point's values and its seed."""
  num_points, replicas = sweeps.num_points(config), config.num_replicas
  seeds = sweeps.run_seeds(config)
  configs = []
  for point in range(num_points):
    flat = metric_writers.flat_hparams(
        (sweeps.point_config(config, point) if num_points > 1 else config).to_dict())
    for replica in range(replicas):
      run = point * replicas + replica
      configs.append({**flat, 'seed': seeds[run], 'run': run, 'sweep_point': point,
                      'replica': replica})
  return configs


class WandbWriter(metric_writers.MetricWriter):
  """Writes to W&B runs (one per network trained together); see the module's docstring."""

  def __init__(self, runs: list[Any]):
    self._runs = runs

  @classmethod
  def from_context(cls, context: metric_writers.WriterContext) -> WandbWriter | None:
    """The writer of `context`'s run; None (with one warning line) where W&B cannot be used."""
    try:
      import wandb  # pylint: disable=g-import-not-at-top
    except ImportError:
      _warn_once("No W&B summaries: the wandb package is not installed (pip install "
                 "'cifar_jax[wandb]'); the run trains without them.")
      return None
    mode = _mode()
    if mode in (None, 'online') and not wandb.login(prompt=False, verify=False):
      _warn_once('No W&B summaries: not logged in to W&B (run `wandb login`, set '
                 'WANDB_API_KEY, or WANDB_MODE=offline to sync later); the run trains '
                 'without them.')
      return None
    config, settings = context.config, context.config.summaries
    group = settings.wandb_group or os.path.basename(os.path.normpath(context.workdir))
    configs = run_configs(config)
    ids = _run_ids(os.path.join(context.logdir, 'wandb'), len(configs))
    runs = []
    try:
      for run_config, run_id in zip(configs, ids, strict=True):
        name = f'{group} {context.job}'
        if len(configs) > 1:
          point = sweeps.describe(sweeps.points(config)[run_config['sweep_point']])
          name += f' {point + ", " if point else ""}seed={run_config["seed"]}'
        run = wandb.init(
            project=settings.wandb_project, entity=settings.wandb_entity or None, group=group,
            job_type=context.job, name=name, id=run_id, resume='allow', config=run_config,
            dir=context.logdir, reinit='create_new', mode=mode,
            # The terminal keeps the tutorial's lines: W&B neither prints nor captures them.
            settings=wandb.Settings(console='off', silent=True))
        run.define_metric('step')
        run.define_metric('*', step_metric='step')
        runs.append(run)
    except Exception as error:  # pylint: disable=broad-except  (W&B's, network's, service's)
      for run in runs:
        run.finish()
      _warn_once(f'No W&B summaries: W&B could not start ({type(error).__name__}: {error}); '
                 'the run trains without them.')
      return None
    return cls(runs)

  def _log(self, run: int, step: int, values: Mapping[str, Any]) -> None:
    if not values or run >= len(self._runs):
      return
    try:
      self._runs[run].log({'step': int(step), **values})
    except Exception as error:  # pylint: disable=broad-except  (W&B's process gone, say)
      _warn_once(f'W&B stopped taking summaries ({type(error).__name__}: {error}); the run '
                 'goes on without them (metrics.jsonl has every figure).')
      self._runs = []

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if len(self._runs) <= 1:
      self._log(0, step, {k: float(v) for k, v in scalars.items()})
      return
    own: list[dict[str, float]] = [{} for _ in self._runs]
    shared = {}
    for key, value in scalars.items():
      run = sweeps.run_of_key(key)
      if run is not None and run[1] < len(self._runs):
        own[run[1]][run[0]] = float(value)
      else:
        shared[GROUP_PREFIX + key] = float(value)
    for k, values in enumerate(own):
      self._log(k, step, {**values, **shared})

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    if not self._runs:
      return
    import wandb  # pylint: disable=g-import-not-at-top
    logged = {}
    for tag, batch in images.items():
      batch = np.asarray(batch)
      batch = batch[None] if batch.ndim == 3 else batch
      pixels = (batch if batch.dtype == np.uint8
                else np.clip(np.rint(batch * 255), 0, 255).astype(np.uint8))
      logged[tag] = [wandb.Image(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]
    self._log(0, step, logged)

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Mapping[str, int] | None = None) -> None:
    if not self._runs:
      return
    import wandb  # pylint: disable=g-import-not-at-top
    self._log(0, step, {
        tag: wandb.Histogram(np_histogram=np.histogram(
            np.asarray(array, np.float64).reshape(-1), bins=(num_buckets or {}).get(tag, 64)))
        for tag, array in arrays.items()})

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    if not self._runs:
      return
    import wandb  # pylint: disable=g-import-not-at-top
    self._log(0, step, {tag: wandb.Html(f'<pre>{text}</pre>') for tag, text in texts.items()})

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    # Each run's config is its own already (a sweep point's values, its seed): the given ones
    # add only what it lacks.
    for run in self._runs:
      run.config.setdefaults(dict(hparams))

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

  def write_videos(self, step, videos):
    del step, videos  # no run of cifar_jax writes videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate  # nor audio

  def flush(self) -> None:
    pass  # each log is handed to W&B's own process at once; it writes and syncs

  def close(self) -> None:
    for run in self._runs:
      run.finish()
    self._runs = []
