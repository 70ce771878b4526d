"""How the global batch is split: one data axis, and views stacked so that each device keeps its
own images.

Under `jax.jit` the arrays are global and GSPMD splits the work by their shardings. A method
that runs the encoder once over every view must merge the views axis V with the batch axis B,
which is split over the devices. A plain reshape (V, B) -> (V * B) puts view 0's B images
before view 1's, so each device's share of the merged axis would hold images that live on other
devices: GSPMD all-gathers the views and every device runs the encoder on the whole global batch.
`stack_views` merges them device-major instead, and `unstack_views` undoes it; both are
layout-only on each device. The number of devices comes from the mesh the program is traced
under (`train_step` sets it); outside a mesh everything is one device and the plain order.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"  # The mesh axis the global batch is split over.


def data_shards() -> int:
    """How many devices the batch axis is split over in the program being traced (1 when no
    mesh is set: `train_step` sets the run's mesh around the loss)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA_AXIS not in mesh.axis_names:
        return 1
    return int(mesh.shape[DATA_AXIS])


def _shards_for(batch: int) -> int:
    shards = data_shards()
    return shards if batch % shards == 0 else 1


def stack_views(views: jax.Array, *, num_views: int | None = 2) -> jax.Array:
    """(V, B, ...) views -> (V * B, ...) images for one encoder pass, in device-major order.

    The batch axis B is split over S devices (views arrive sharded as P(None, "data")). A plain
    reshape would put view 0's B images before view 1's, so that device s's share of the merged
    axis holds images that live on other devices, and GSPMD all-gathers the views to every
    device. Here the merged axis is ordered [view 0 block 0, view 1 block 0, view 0 block 1, ...]
    (block s = the B / S images of device s), so each device's share is exactly its own images
    of every view: the encoder runs on B * V / S images per device and only features cross
    devices. With S = 1 the order is the plain one, bit for bit. `unstack_views` inverts it.
    `num_views` (default 2) refuses other view counts; None takes any.
    """
    if num_views is not None and views.shape[0] != num_views:
        raise ValueError(f"this method takes exactly {num_views} views, got {views.shape[0]}")
    num, batch, rest = views.shape[0], views.shape[1], views.shape[2:]
    shards = _shards_for(batch)
    images = views.reshape((num, shards, batch // shards) + rest).swapaxes(0, 1)
    images = images.reshape((num * batch,) + rest)
    if shards > 1:
        images = jax.lax.with_sharding_constraint(images, P(DATA_AXIS))
    return images


def unstack_views(x: jax.Array, num_views: int, axis: int = 0) -> jax.Array:
    """Inverse of `stack_views` on `axis`: (..., V * B, ...) -> (..., V, B, ...), B still split
    over the devices as the views were."""
    size = x.shape[axis]
    if size % num_views:
        raise ValueError(f"axis {axis} of size {size} does not hold {num_views} views")
    batch = size // num_views
    shards = _shards_for(batch)
    before, after = x.shape[:axis], x.shape[axis + 1:]
    x = x.reshape(before + (shards, num_views, batch // shards) + after).swapaxes(axis, axis + 1)
    return x.reshape(before + (num_views, batch) + after)
