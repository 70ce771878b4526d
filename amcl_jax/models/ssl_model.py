"""The model every pretraining method trains: encoder -> C-head projector [-> predictor].

The parameter tree is {"encoder", "projector"[, "predictor"][, "temperature_net"]}: the names
every checkpoint holds, whichever method wrote it.
"""

from __future__ import annotations

import flax.linen as nn
import jax


class SSLModel(nn.Module):
    """Encoder -> C-head projector [-> C-head predictor]; owns the temperature network's params.

    Attributes:
      encoder: `(x, train) -> (B, F)`.
      projector: `(features, train) -> (C, B, D)` (a `MultiHeadMLP`).
      predictor: None or `(projections (C, B, D), train) -> (C, B, D)` (SimSiam, BYOL).
      temperature_net: None or a module called as `temperature_net(z, z)` on (C, B, D) head
        outputs; only called here at initialisation to create its params (the method applies it
        on its own with `params["temperature_net"]`).
    """

    encoder: nn.Module
    projector: nn.Module
    predictor: nn.Module | None = None
    temperature_net: nn.Module | None = None

    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """x (B, H, W, 3) -> features (B, F) float32, projections (C, B, D) float32."""
        features = self.encoder(x, train=train)
        projections = self.projector(features, train=train)
        if self.is_initializing():
            if self.predictor is not None:
                self.predictor(projections, train=train)
            if self.temperature_net is not None:
                self.temperature_net(projections, projections)  # Creates its parameters.
        return features, projections

    def projections(self, x: jax.Array, train: bool) -> jax.Array:
        """x (B, H, W, 3) -> projections (C, B, D) float32."""
        return self(x, train=train)[1]

    def forward(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """x (B, H, W, 3) -> projections (C, B, D), predictions (C, B, D) (the online branch)."""
        projections = self.projections(x, train=train)
        return projections, self.predictor(projections, train=train)

    def features(self, x: jax.Array) -> jax.Array:
        """Backbone features (B, F) float32 in inference mode (kNN, probes)."""
        return self.encoder(x, train=False)
