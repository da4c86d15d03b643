"""The sample output lines in README.md and docs/*.md are what the programs print today.

A line in a code block that starts with a timestamp is one of the trainer's or evaluator's
lines (`summaries.print_line`): it must have the shape of one the code writes (the training
log line of `loop`, the precision lines of `scoring.Result.line`, the decoding progress of
`terminal.ProgressLine`). A sample `error:` line must be built from a sentence of the package:
each of its fixed stretches of words (between paths, numbers and names) is in cifar_jax/.
"""

import glob
import os
import re

import pytest

from tests.conftest import REPO_ROOT

DOCS = [os.path.join(REPO_ROOT, 'README.md'), *sorted(glob.glob(os.path.join(REPO_ROOT, 'docs',
                                                                             '*.md')))]
TIMESTAMP = r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}: '
SUFFIX = r'(; TTA \w+)?'
CALIBRATION = r'(; (NLL \d+\.\d{3}(, ECE \d\.\d{3})?|ECE \d\.\d{3}))?'  # config.eval.metrics
SET = r'[A-Za-z][\w.-]*: '  # an evaluation set's line starts with its name
SHAPES = {
    'training log line': r'step \d+, loss = \d+\.\d\d \((mean of \d+ runs; )?[\d.]+ '
                         r'examples/sec; \d+\.\d{3} sec/batch(, compilation included)?\)',
    'precision': rf'({SET})?step \d+, precision @ 1 = \d\.\d{{3}} \((raw|EMA) parameters: '
                 rf'\d\.\d{{3}}{SUFFIX}\){CALIBRATION}',
    'corrupted set': rf'{SET}step \d+, mean precision @ 1 over \d+ corruptions x \d severities = '
                     rf'\d\.\d{{3}} \(((raw|EMA) parameters: \d\.\d{{3}}|no EMA)\); '
                     rf'NLL \d+\.\d{{3}}, ECE \d\.\d{{3}}; worst: \w+',
    'out-of-distribution set': rf'{SET}step \d+, out of distribution: AUROC \d\.\d{{3}}, FPR95 '
                               rf'\d\.\d{{3}} \(((raw|EMA) parameters: AUROC \d\.\d{{3}}, '
                               rf'FPR95 \d\.\d{{3}}|no EMA); maximum softmax probability\)',
    'corruption progress': r'Corrupting \(\w+, severity \d\): ([\d,]+/[\d,]+ images \([\d,]+/s, '
                           r'[\d,]+ s left\)|[\d,]+ images in [\d.,]+ s)',
    'precision, no EMA': rf'({SET})?step \d+, precision @ 1 = \d\.\d{{4}} \(no EMA{SUFFIX}\)'
                         rf'{CALIBRATION}',
    'precision of replicas': rf'step \d+, precision @ 1 = \d\.\d{{4}} ± \d\.\d{{4}} \(n=\d+, '
                             rf'95% CI; (no EMA|(EMA|raw) parameters: \d\.\d{{4}} ± '
                             rf'\d\.\d{{4}}){SUFFIX}\)',
    'decoding progress': r"Decoding split '[^']+' of \S+: ([\d,]+/[\d,]+ images \([\d,]+/s, "
                         r'[\d,]+ s left\)|[\d,]+ images in [\d.,]+ s)',
    'weights loaded': r'Loaded \d+ of \d+ tensors from (run \S+ at step \d+ \((EMA|raw) '
                      r"parameters\)|PyTorch file \S+)(; kept fresh: [^;]+)?(; not in this "
                      r"network: \d+ of the source's \([^)]*\))?\.",
}


def _code_block_lines():
  for path in DOCS:
    with open(path) as f:
      inside = False
      for number, line in enumerate(f, 1):
        if line.startswith('```'):
          inside = not inside
        elif inside:
          yield f'{os.path.relpath(path, REPO_ROOT)}:{number}', line.rstrip('\n')


TIMESTAMPED = [(where, line) for where, line in _code_block_lines() if re.match(TIMESTAMP, line)]
ERRORS = [(where, line) for where, line in _code_block_lines() if line.startswith('error: ')]


def test_the_docs_have_sample_lines_to_check():
  assert len(TIMESTAMPED) >= 5 and len(ERRORS) >= 2


@pytest.mark.parametrize('where, line', TIMESTAMPED, ids=[w for w, _ in TIMESTAMPED])
def test_a_timestamped_sample_line_has_the_shape_the_code_prints(where, line):
  message = re.sub(TIMESTAMP, '', line, count=1)
  assert any(re.fullmatch(shape, message) for shape in SHAPES.values()), (where, line)


def _package_text():
  text = []
  for path in glob.glob(os.path.join(REPO_ROOT, 'cifar_jax', '**', '*.py'), recursive=True):
    with open(path) as f:
      # Sentences are split over string literals: join adjacent literals' text.
      text.append(re.sub(r"['\"]\s*\n\s*f?['\"]", '', f.read()))
  return '\n'.join(text)


@pytest.mark.parametrize('where, line', ERRORS, ids=[w for w, _ in ERRORS])
def test_a_sample_error_line_is_a_sentence_of_the_package(where, line):
  source = _package_text()
  # Fixed stretches: runs of plain words between paths, numbers, quoted names and brackets.
  stretches = [s.strip() for s in re.split(r"\S*[/\d'(){}\[\]]\S*", line.removeprefix('error: '))]
  stretches = [s.rstrip('.;,') for s in stretches if len(s.split()) >= 3]
  assert stretches, line
  for stretch in stretches:
    assert stretch in source, (where, stretch)
