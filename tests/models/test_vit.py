"""amcl_jax.models.vit: the patch size chosen for an image size. (The ViTs' shapes, parameter
counts and a training step: test_registry.py.)"""

from amcl_jax.models.vit import auto_patch_size


def test_auto_patch_size():
    assert [auto_patch_size(s) for s in (8, 16, 32, 96, 224, 384)] == [1, 2, 4, 12, 16, 16]
