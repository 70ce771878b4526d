"""The self-supervised losses, one module per family; every public name is re-exported here
(`from amcl_jax import losses; losses.nt_xent(...)`).

- `contrastive`: NT-Xent and AMCL-SimCLR (Eq. 2.1 with top-k, max or log-sum-exp negatives;
  Eq. 2.4's InfoNCE form).
- `moco`: MoCo's InfoNCE and AMCL-MoCo against a queue of keys.
- `siamese`: SimSiam's and BYOL's symmetric negative cosine, AMCL-SimSiam (Eq. 2.2).
- `barlow_twins`: Barlow Twins and AMCL-Barlow Twins (Eq. 2.3).
- `vicreg`: VICReg's variance, invariance and covariance terms (a baseline: no AMCL form).
- `released_code`: the authors' released loss, for comparison only.
- `hard_negatives`: the per-anchor top-k and hard-max terms the contrastive and MoCo losses
  share.
- `temperatures`, `regularisers`, `common`: temperature functions, Omega(tau), L2 normalisation.

All functions are pure JAX. Whatever the input dtype (bfloat16 under mixed precision), every
similarity, temperature, log-sum-exp and regulariser is computed in float32.

Shapes: C heads, N images per batch (2N views), D projection dimension.
"""

from amcl_jax.losses.barlow_twins import (
    STANDARDISATIONS,
    amcl_barlow_twins,
    barlow_twins_loss,
    cross_correlation,
)
from amcl_jax.losses.common import Metrics, l2_normalize
from amcl_jax.losses.contrastive import (
    DEFAULT_CHUNK_SIZE,
    NEGATIVES_CHOICES,
    amcl_contrastive,
    amcl_infonce_max,
    nt_xent,
)
from amcl_jax.losses.hard_negatives import DEFAULT_TOPK
from amcl_jax.losses.moco import QUEUE_DIRECTIONS, amcl_queue_contrastive, moco_infonce
from amcl_jax.losses.regularisers import omega
from amcl_jax.losses.released_code import released_code_loss
from amcl_jax.losses.siamese import amcl_simsiam, symmetric_negative_cosine
from amcl_jax.losses.temperatures import ConstantTemperature, TemperatureFn, constant_temperature
from amcl_jax.losses.vicreg import vicreg_loss

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_TOPK",
    "NEGATIVES_CHOICES",
    "QUEUE_DIRECTIONS",
    "STANDARDISATIONS",
    "ConstantTemperature",
    "Metrics",
    "TemperatureFn",
    "amcl_barlow_twins",
    "amcl_contrastive",
    "amcl_infonce_max",
    "amcl_queue_contrastive",
    "amcl_simsiam",
    "barlow_twins_loss",
    "constant_temperature",
    "cross_correlation",
    "l2_normalize",
    "moco_infonce",
    "nt_xent",
    "omega",
    "released_code_loss",
    "symmetric_negative_cosine",
    "vicreg_loss",
]
