"""amcl-jax: Adaptive Multi-head Contrastive Learning (ECCV 2024) in JAX/Flax."""

from amcl_jax.export import load_encoder as load_encoder
from amcl_jax.platform.backends import skip_absent_tpu as _skip_absent_tpu

__version__ = "0.1.0"

_skip_absent_tpu()
