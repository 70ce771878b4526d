"""The run's jitted programs for a mesh: the train step and the feature extractor, with the
shardings that split the work.

One data axis spans every device. The train state is replicated (or, with
`model.shard_params`, its large parameters and optimizer moments are split over the data axis,
FSDP-style); views `(V, B, H, W, 3)` and labels `(B,)` are split along B. Each device runs the
encoder on its own B / N images of every view (`sharding.stack_views`); what crosses
devices is the gradient reduction, BatchNorm statistics and the gathers of features that global
negatives, the MoCo queue and Barlow Twins' cross-correlation need. The trainer runs these
programs; `python -m amcl_jax.compile` compiles them for a topology without running them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from amcl_jax import forms, methods, optim
from amcl_jax import state as state_lib
from amcl_jax import step as step_lib
from amcl_jax.methods.common import xla_cpu_ynnpack
from amcl_jax.platform import cpu
from amcl_jax.sharding import DATA_AXIS

# Parameters smaller than this stay replicated under `model.shard_params` (biases, norms): their
# all-gathers would cost more in latency than they save in memory.
SHARD_MIN_ELEMENTS = 2**14


def data_mesh(devices=None) -> Mesh:
    """One data axis over `devices` (default: every device of every host)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def compiler_options(config: ml_collections.ConfigDict,
                     backend: str | None = None) -> dict[str, Any] | None:
    """`jax.jit` compiler options for the programs that run the model (`model.xla_cpu_ynnpack`;
    a config written before that field existed gets its default)."""
    return cpu.xla_compiler_options(xla_cpu_ynnpack(config), backend)


def _param_spec(shape: tuple[int, ...], num_shards: int) -> P:
    """FSDP: split the largest axis that `num_shards` divides; small arrays stay replicated."""
    if num_shards == 1 or int(np.prod(shape, dtype=np.int64)) < SHARD_MIN_ELEMENTS:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % num_shards == 0:
            return P(*([None] * axis + [DATA_AXIS]))
    return P()


def state_shardings(state_shapes, mesh: Mesh, *, shard_params: bool):
    """Replicated, or with `shard_params` every large parameter and its optimizer moments (arrays
    of the parameters' shapes) split over the data axis."""
    replicated = NamedSharding(mesh, P())
    if not shard_params:
        return jax.tree.map(lambda _: replicated, state_shapes)
    num_shards = mesh.shape[DATA_AXIS]
    param_shapes = {tuple(x.shape) for x in jax.tree.leaves(state_shapes.params)}
    spec = lambda x: (NamedSharding(mesh, _param_spec(tuple(x.shape), num_shards))
                      if tuple(x.shape) in param_shapes and x.ndim else replicated)
    return jax.tree.map(spec, state_shapes)


@dataclasses.dataclass(frozen=True)
class Programs:
    """The model, its optimizer, and the jitted programs of one run on `mesh`."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    model: Any
    method: Any
    tx: Any
    schedule: Callable
    init_state: Callable[[], Any]
    state_shapes: Any
    state_shardings: Any
    step: Any  # jitted (state, views, labels) -> (state, metrics); donates the state.
    features: Any  # jitted (variables, images (B, H, W, 3)) -> (B, F) backbone features.

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def views_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(None, DATA_AXIS))

    @property
    def rows_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(DATA_AXIS))

    def abstract_step_inputs(self) -> tuple[Any, jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
        """The step's arguments as sharded shapes: what `step.lower(*...)` compiles for."""
        config = self.config
        size = config.data.image_size
        state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                             self.state_shapes, self.state_shardings)
        views = jax.ShapeDtypeStruct((config.data.num_views, config.batch_size, size, size, 3),
                                     np.float32, sharding=self.views_sharding)
        labels = jax.ShapeDtypeStruct((config.batch_size,), np.int32,
                                      sharding=self.rows_sharding)
        return state, views, labels

    def abstract_feature_inputs(self, batch_size: int) -> tuple[Any, jax.ShapeDtypeStruct]:
        size = self.config.data.image_size
        variables = {"params": self.state_shapes.params,
                     "batch_stats": self.state_shapes.batch_stats}
        shardings = {"params": self.state_shardings.params,
                     "batch_stats": self.state_shardings.batch_stats}
        variables = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), variables,
            shardings)
        images = jax.ShapeDtypeStruct((batch_size, size, size, 3), np.float32,
                                      sharding=self.rows_sharding)
        return variables, images


def build(config: ml_collections.ConfigDict, mesh: Mesh, total_steps: int, *,
          backend: str | None = None) -> Programs:
    """The run's model, optimizer and jitted programs on `mesh` (nothing is allocated).

    `config`'s AMCL form's fields are resolved (`forms.resolve`)."""
    forms.check_resolved(config)
    method = methods.get_method(config.method)
    model = method.build_model(config)
    tx, schedule = optim.build_optimizer(config, total_steps)
    init_state = functools.partial(state_lib.create_train_state, config, model, method, tx)
    state_shapes = jax.eval_shape(init_state)
    shardings = state_shardings(state_shapes, mesh,
                                shard_params=bool(config.model.get("shard_params", False)))
    options = compiler_options(config, backend)
    replicated = NamedSharding(mesh, P())
    step = jax.jit(
        functools.partial(step_lib.train_step, model=model, method=method, tx=tx, schedule=schedule,
                          config=config, total_steps=total_steps, mesh=mesh),
        in_shardings=(shardings, NamedSharding(mesh, P(None, DATA_AXIS)),
                      NamedSharding(mesh, P(DATA_AXIS))),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,), compiler_options=options)
    features = jax.jit(lambda variables, x: model.apply(variables, x, method="features"),
                       out_shardings=NamedSharding(mesh, P(DATA_AXIS)),
                       compiler_options=options)
    return Programs(config=config, mesh=mesh, model=model, method=method, tx=tx,
                    schedule=schedule, init_state=init_state, state_shapes=state_shapes,
                    state_shardings=shardings, step=step, features=features)
