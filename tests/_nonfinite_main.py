"""Runs a script (main.py) with the views of one update made NaN, to exercise the trainer's
non-finite guard end to end; the trainer itself has no test hook.

    python tests/_nonfinite_main.py STEP main.py --config=... --workdir=W

STEP counts updates as the log does (update k takes the state from step k-1 to k).
"""

import runpy
import sys

sys.path.insert(0, ".")

import jax.numpy as jnp  # noqa: E402

from amcl_jax import step  # noqa: E402

nan_step = int(sys.argv[1])
script, sys.argv = sys.argv[2], sys.argv[2:]
real_train_step = step.train_step


def train_step_with_nan_views(state, views, labels=None, **kwargs):
    views = jnp.where(state.step + 1 == nan_step, jnp.nan, views)
    return real_train_step(state, views, labels, **kwargs)


step.train_step = train_step_with_nan_views
runpy.run_path(script, run_name="__main__")
