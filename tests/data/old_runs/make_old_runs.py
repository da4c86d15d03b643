"""Writes the old-run fixtures with the code of the checkout it runs in (see README.md).

  python tests/data/old_runs/make_old_runs.py tests/data/old_runs   # from the repository root
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.getcwd())
from cifar_jax import evaluate, experiment

TINY = {'dataset.synthetic_train_size': 256, 'dataset.synthetic_test_size': 100,
        'per_device_batch_size': 16, 'num_train_steps': 80, 'checkpoint_every_steps': 80,
        'learning_rate': 0.1,
        'dataset.synthetic_num_classes': 4,
        'keep_checkpoints': 1, 'log_every_steps': 10, 'histogram_every_steps': 30,
        'eval_every_steps': 0, 'compilation_cache_dir': '', 'eval.run_once': True}
SMOKE = {**TINY, 'model.conv_features': 4, 'model.local3_features': 8,
         'model.local4_features': 8}
RUNS = {
  'single': ('smoke.py', SMOKE),
  'replicas': ('smoke.py', {**SMOKE, 'num_replicas': 2}),
  'sweep': ('smoke.py', {**SMOKE, 'sweep.learning_rate': (0.05, 0.1)}),
  'resnet': ('resnet18.py', {**TINY, 'dataset.source': 'synthetic', 'dataset.train_split': 'train',
                             'dataset.eval_split': 'test', 'dataset.synthetic_image_size': 16,
                             'crop_size': 16, 'num_train_epochs': 0.0, 'model.width': 2}),
}
out = sys.argv[1]
scores = {}
for name, (recipe, overrides) in RUNS.items():
  workdir = os.path.join(out, name)
  shutil.rmtree(workdir, ignore_errors=True)
  config = experiment.load_config(os.path.join('experiments', recipe), overrides)
  experiment.train(config, workdir, evaluate_in_process=False)
  results = evaluate.evaluate(config, workdir)
  (step, result), = results.items()
  scores[name] = {'step': step, 'precision': {
      'ema': [s.precision for s in result.ema], 'raw': [s.precision for s in result.raw]}}
  shutil.rmtree(os.path.join(workdir, 'eval'), ignore_errors=True)
print(json.dumps(scores, indent=1))
sys.path.insert(0, 'benchmarks')
from bit_identity import fingerprint  # noqa: E402

for name in RUNS:
  run = experiment.load_checkpoint(os.path.join(out, name))
  scores[name]['fingerprints'] = {'params': fingerprint(run.state.params),
                                  'ema': fingerprint(run.state.ema_params),
                                  'batch_stats': fingerprint(run.state.batch_stats)}
  for junk in os.listdir(os.path.join(out, name)):
    if junk.startswith('events.') or junk in ('trainer.lock', 'metrics.jsonl'):
      os.remove(os.path.join(out, name, junk))
json.dump(scores, open(os.path.join(out, 'expected.json'), 'w'), indent=1, sort_keys=True)
