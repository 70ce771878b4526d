"""Settings that only one backend needs, kept out of the model code (`cpu`: XLA:CPU)."""
