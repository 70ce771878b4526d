"""The project's real jitted train step, built as `main.py` builds it, for benchmarks.

`make_jax_step(...)` returns a closure that runs one donated-state update on a fixed random batch
and blocks until it is done; `loss_peak_bytes(...)` compiles loss + gradient and reads XLA's
memory analysis.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from amcl_jax import forms, losses, methods, models, optim
from amcl_jax.config import get_default_config
from amcl_jax.program import compiler_options
from amcl_jax.state import TrainState
from amcl_jax.step import train_step

# name -> config overrides ("section.field": value).
VARIANTS: dict[str, dict] = {
    "simclr": {"amcl.enabled": False},
    # The authors' form (pair-score map, top-k negatives) and the project's (a [u; v] MLP per
    # head) with its two negative modes: docs/amcl.md.
    "amcl_topk": {"amcl.enabled": True, "amcl.form": "authors"},
    "amcl_max": {"amcl.enabled": True, "amcl.form": "project", "amcl.negatives": "max"},
    "amcl_logsumexp": {"amcl.enabled": True, "amcl.form": "project",
                       "amcl.negatives": "logsumexp"},
}
# Optimisation attempts at the step level (timed only when named in `--jax_variants`), to
# compare against "simclr" (the configured default): SimCLR with a given `model.xla_cpu_ynnpack`
# (which XLA:CPU ops YNNPACK runs) ...
ATTEMPT_VARIANTS: dict[str, dict] = {
    f"simclr_ynnpack_{setting}": {"amcl.enabled": False, "model.xla_cpu_ynnpack": setting}
    for setting in ("jaxlib", "dot", "none")
}
# ... and without the CPU fusion barriers on the ResNet's activations (models/resnet.py).
ATTEMPT_VARIANTS["simclr_no_fusion_barriers"] = {"amcl.enabled": False,
                                                 "model.cpu_fusion_barriers": False}
# ... and without donating the train state to the step (as `train_and_evaluate` does): options of
# `make_jax_step` rather than config overrides, by variant name.
ATTEMPT_VARIANTS["simclr_no_donation"] = {"amcl.enabled": False}
STEP_OPTIONS: dict[str, dict] = {"simclr_no_donation": {"donate": False}}


def make_config(*, batch_per_view: int, overrides: dict, model: str = "resnet18",
                width: float = 1.0, image_size: int = 32, dtype: str = "float32"
                ) -> ml_collections.ConfigDict:
    config = get_default_config()
    config.model.name = model
    config.model.width = width
    config.model.dtype = dtype
    config.batch_size = batch_per_view
    config.data.image_size = image_size
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def make_jax_step(config: ml_collections.ConfigDict, seed: int = 0, donate: bool = True
                  ) -> tuple[Callable[[], float], float]:
    """(step, compile_seconds): `step()` runs one update (views (2, B, S, S, 3)), returns seconds.

    The state is donated (unless `donate=False`) and carried inside the closure, as in
    `train_and_evaluate`, replicated
    over a data mesh of every device with the views split along the batch (synchronized
    BatchNorm); the first call (compilation included) is made here.
    """
    import time

    config = forms.resolve(config)
    method = methods.get_method(config.method)
    model = method.build_model(config)
    tx, schedule = optim.build_optimizer(config, total_steps=1000)
    rng = jax.random.PRNGKey(seed)
    size = config.data.image_size

    def init() -> TrainState:
        variables = model.init(rng, jnp.zeros((2, size, size, 3)), train=False)
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=variables["params"],
            batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
            extra=method.init_extra(config, variables, rng), rng=rng,
            nonfinite_step=jnp.full((), -1, jnp.int32), nonfinite_what=jnp.zeros((), jnp.int32))

    state = jax.jit(init)()  # One program, not one compilation per operation.
    # As `train_and_evaluate`: one data axis over every device (state replicated, views split
    # along the batch); with one device this is the plain single-device program.
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, P())
    views_sharding = NamedSharding(mesh, P(None, "data"))
    state_shardings = jax.tree.map(lambda _: replicated, state)
    state = jax.device_put(state, state_shardings)
    jitted = jax.jit(functools.partial(train_step, model=model, method=method, tx=tx,
                                       schedule=schedule, config=config),
                     donate_argnums=(0,) if donate else (),
                     in_shardings=(state_shardings, views_sharding),
                     out_shardings=(state_shardings, replicated),
                     compiler_options=compiler_options(config))
    views = jax.device_put(
        jax.random.normal(rng, (2, config.batch_size, size, size, 3), jnp.float32),
        views_sharding)
    holder = {"state": state}

    def step() -> float:
        start = time.perf_counter()
        holder["state"], metrics = jitted(holder["state"], views)
        holder["loss"] = jax.block_until_ready(metrics["loss"])
        return time.perf_counter() - start

    compile_seconds = step()
    step.last_loss = lambda: float(holder["loss"])  # The loss of the latest update.
    # XLA's memory analysis of the compiled step (a second compilation; attempts only).
    step.memory_stats = lambda: _memory_stats(jitted.lower(holder["state"], views).compile())
    return step, compile_seconds


def _memory_stats(compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    out = {name: int(getattr(stats, name)) for name in (
        "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
        "alias_size_in_bytes", "generated_code_size_in_bytes") if hasattr(stats, name)}
    # Live at the peak: the scratch buffers plus the inputs and outputs (aliased ones once).
    out["peak_bytes"] = (out["temp_size_in_bytes"] + out["argument_size_in_bytes"]
                         + out["output_size_in_bytes"] - out.get("alias_size_in_bytes", 0))
    return out


def loss_peak_bytes(*, loss: str, batch_per_view: int, dim: int = 128, num_heads: int = 3,
                    negatives: str = "logsumexp", chunk_size: int = 256, hidden_dim: int = 128,
                    temperature: float = 0.5, beta: float = 0.1) -> dict[str, int]:
    """XLA memory analysis of jit(value_and_grad(loss)) at 2 * batch_per_view views.

    loss="ntxent": `losses.nt_xent`, gradient wrt z (1, 2N, D).
    loss="amcl": `losses.amcl_contrastive` with a `TemperatureNet` (one MLP per head; the
    project's form), or with negatives="topk" the authors' shared `PairScoreTemperature`, gradient
    wrt z (C, 2N, D) and the temperature-net params. Nothing is executed (compile only).
    """
    n = batch_per_view
    if loss == "ntxent":
        def fn(z):
            return losses.nt_xent(z[0, :n], z[0, n:], temperature)[0]

        args = (jax.ShapeDtypeStruct((1, 2 * n, dim), jnp.float32),)
        grad_fn = jax.value_and_grad(fn)
    elif loss == "amcl":
        module = (models.PairScoreTemperature(num_heads=num_heads, hidden_dim=hidden_dim)
                  if negatives == "topk" else
                  models.TemperatureNet(num_heads=num_heads, hidden_dim=hidden_dim))
        probe = jnp.zeros((num_heads, 2, dim), jnp.float32)
        params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), probe, probe))["params"]

        def fn(z, params):
            temperature_fn = models.BoundTemperature(module, params)
            return losses.amcl_contrastive(
                z[:, :n], z[:, n:], temperature_fn, beta=beta, omega_dim=dim,
                negatives=negatives, chunk_size=chunk_size)[0]

        args = (jax.ShapeDtypeStruct((num_heads, 2 * n, dim), jnp.float32), params)
        grad_fn = jax.value_and_grad(fn, argnums=(0, 1))
    else:
        raise ValueError(f"loss must be 'ntxent' or 'amcl', got {loss!r}")
    return _memory_stats(jax.jit(grad_fn).lower(*args).compile())
