r"""Downloads the wheels a JAX-only GPU machine lacks, for `gpu_run.py --wheelhouse=DIR`.

  python benchmarks/gpu_wheelhouse.py DIR [--python_versions=3.12,3.13,3.14]

Run where the package registries are reachable; copy DIR to the GPU machine.
A machine lent with JAX, Flax, Optax, Orbax, PyTorch and TensorBoard (and their
dependencies: NumPy, SciPy, absl, etils, PyYAML, ...) but no TensorFlow, tfds,
clu or ml_collections needs, for cifar_jax: clu and ml_collections, what they
need beyond that (wrapt), Pillow for image folders, and setuptools to install
cifar_jax itself (`pip install --no-deps -e .`). Pure-Python wheels are
downloaded once; compiled ones (wrapt, PyYAML, Pillow) for each of
`--python_versions` on Linux x86_64, since the GPU machine's Python is not
known here (JAX 0.11 needs 3.12 or newer). Versions follow
`.ci/constraints.txt` where it names them. The last line is JSON: the files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSTRAINTS = os.path.join(REPO_ROOT, '.ci', 'constraints.txt')

PURE = ('clu', 'ml_collections', 'absl-py', 'etils', 'importlib_resources', 'zipp',
        'typing_extensions', 'packaging', 'setuptools', 'wheel')
COMPILED = ('wrapt', 'PyYAML', 'pillow')
PLATFORMS = ('manylinux2014_x86_64', 'manylinux_2_17_x86_64', 'manylinux_2_28_x86_64')


def download(directory: str, python_versions: list[str], python: str = sys.executable) -> None:
  common = [python, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', '-d',
            directory, '-c', CONSTRAINTS]
  subprocess.run([*common, *PURE], check=True)
  for version in python_versions:
    tag = version.replace('.', '')
    platforms = [flag for platform in PLATFORMS for flag in ('--platform', platform)]
    # A release with no wheel for a new Python yet is left out rather than failing the rest.
    for package in COMPILED:
      result = subprocess.run([*common[:-2], *platforms, '--python-version', version,
                               '--implementation', 'cp', '--abi', f'cp{tag}', package],
                              check=False)
      if result.returncode:
        print(f'note: no {package} wheel for Python {version} on Linux x86_64 was found.',
              file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('directory')
  parser.add_argument('--python_versions', default='3.12,3.13,3.14')
  args = parser.parse_args(argv)
  os.makedirs(args.directory, exist_ok=True)
  download(args.directory, args.python_versions.split(','))
  print(json.dumps({'wheelhouse': os.path.abspath(args.directory),
                    'files': sorted(os.listdir(args.directory))}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
