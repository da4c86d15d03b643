"""summaries: JSON lines, and TensorBoard event files written without TensorFlow."""

import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from cifar_jax.core import layout, summaries
from tests.conftest import REPO_ROOT


def test_tensorboard_reads_back_scalars_images_and_histograms(tmp_path):
  event_accumulator = pytest.importorskip(
      'tensorboard.backend.event_processing.event_accumulator')
  writer = summaries.create_writer(str(tmp_path))
  writer.write_scalars(3, {'loss': 2.5, 'precision': 0.25}, record={'status': 'scored'})
  image = np.zeros((1, 4, 6, 3), np.float32)
  image[0, 1, 2] = 1.0
  writer.write_images(3, {'confusion_matrix': image})
  values = np.arange(100, dtype=np.float32)
  writer.write_histograms(4, {'params/w': values})
  writer.close()

  events = event_accumulator.EventAccumulator(
      str(tmp_path), size_guidance={event_accumulator.HISTOGRAMS: 0})
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars('loss')] == [(3, 2.5)]
  assert [(e.step, e.value) for e in events.Scalars('precision')] == [(3, 0.25)]
  (png,) = events.Images('confusion_matrix')
  assert (png.step, png.width, png.height) == (3, 6, 4)
  decoded = np.asarray(Image.open(io.BytesIO(png.encoded_image_string)))
  np.testing.assert_array_equal(decoded, (image[0] * 255).astype(np.uint8))
  (histogram,) = events.Histograms('params/w')
  value = histogram.histogram_value
  assert (histogram.step, value.min, value.max, value.num) == (4, 0, 99, 100)
  assert (value.sum, value.sum_squares) == (4950, float(np.sum(values.astype(np.float64) ** 2)))
  assert sum(value.bucket) == 100 and len(value.bucket) == 30 and value.bucket_limit[-1] == 99
  assert summaries.read_records(str(tmp_path / layout.METRICS)) == [
      {'step': 3, 'loss': 2.5, 'precision': 0.25, 'status': 'scored'}]


def test_writing_summaries_does_not_import_tensorflow(tmp_path):
  pytest.importorskip('tensorboard')
  script = (
      'import sys, numpy as np\n'
      'from cifar_jax.core import summaries\n'
      f'w = summaries.create_writer({str(tmp_path)!r})\n'
      'w.write_scalars(1, {"loss": 1.0})\n'
      'w.write_images(1, {"x": np.zeros((2, 4, 4, 3))})\n'
      'w.write_histograms(1, {"h": np.ones(5)})\n'
      'w.close()\n'
      'print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))\n')
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]'
  assert [f for f in os.listdir(tmp_path) if f.startswith('events.out.tfevents')]
