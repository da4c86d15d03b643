"""The neutral base: every field cifar_jax reads, at its declared default, every option off.

  python -m cifar_jax.main --workdir=/tmp/base --config=experiments/base.py

trains the tutorial's network on tfds CIFAR-10 with plain SGD at a constant
learning rate: no augmentation (the full 32x32 image, per-image
standardisation), no L2 penalty or weight decay, no EMA, no lookahead, no
test-time augmentation. A recipe (`cifar10.py`, `airbench94.py`) imports this
file and sets what it uses.

The fields and their defaults are declared once, next to the code that reads
them (`fields.Field` in each module's FIELDS and in the registries); this
config is built from those declarations. `python -m cifar_jax.config.schema`
lists every field with its default and what it means; docs/config.md explains
the groups.
"""

import ml_collections

from cifar_jax.config import schema


def get_config() -> ml_collections.ConfigDict:
  return schema.default_config()
