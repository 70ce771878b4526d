"""The PyTorch reference train step: the same SimCLR computation as `amcl_jax`, in eager PyTorch.

Benchmark-only (PyTorch is not a dependency of the package; see `bench/requirements.txt`).
Mirrors `amcl_jax.models.ResNet18(stem="cifar")` + a one-head `MultiHeadMLP` (no BatchNorm) +
`nt_xent`:

- stem: 3x3 conv stride 1, no bias, BN, ReLU, no max-pool; then BasicBlocks (2, 2, 2, 2) with
  base channels round(64 * width), a 1x1 projection shortcut (conv + BN) where the shape changes;
- BatchNorm momentum 0.1 (flax's 0.9), eps 1e-5, affine; global average pool;
- projector Linear(F, 512) - ReLU - Linear(512, 128), with biases;
- NT-Xent at temperature 0.5 over the 2N views (self excluded, positive included);
- SGD momentum 0.9, coupled weight decay 5e-4 on every parameter (optax add_decayed_weights + sgd);
- float32 (or bfloat16 autocast, as `model.dtype="bfloat16"`: bfloat16 convolutions and matmuls,
  float32 parameters); both views in one forward pass (concatenated along the batch, as
  `SimCLR.apply_loss`).

Runs on the GPU when PyTorch sees one (as JAX then does), with PyTorch's fastest settings there:
cuDNN autotuning (`cudnn.benchmark`) and TF32 for float32 matmuls and convolutions (what JAX's
default precision does on those GPUs).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from bench.timing import default_matmul_size, time_calls


def base_channels(width: float) -> int:
    """As `amcl_jax.models.resnet.base_channels`: round(64 * width), at least 1."""
    return max(1, round(64 * width))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, filters: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, filters, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != filters:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, filters, 1, stride, 0, bias=False),
                                          nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(self.shortcut(x) + y)


class SimCLRResNet18(nn.Module):
    """ResNet-18 (CIFAR stem) + projector; `forward(x (B, 3, H, W)) -> z (B, out_dim)`."""

    def __init__(self, width: float = 1.0, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        base = base_channels(width)
        self.stem = nn.Sequential(nn.Conv2d(3, base, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(base, eps=1e-5, momentum=0.1), nn.ReLU())
        blocks, cin = [], base
        for stage in range(4):
            filters = base * 2**stage
            for block in range(2):
                blocks.append(BasicBlock(cin, filters, 2 if stage > 0 and block == 0 else 1))
                cin = filters
        self.blocks = nn.Sequential(*blocks)
        self.projector = nn.Sequential(nn.Linear(cin, hidden_dim), nn.ReLU(),
                                       nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x)).mean(dim=(2, 3))
        return self.projector(features)


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """As `amcl_jax.losses.nt_xent`: z_a, z_b (N, D) -> mean over 2N anchors."""
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device),
                                float("-inf"))
    positive = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return F.cross_entropy(logits, positive)


def num_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics excluded, as flax's `params`)."""
    return sum(p.numel() for p in model.parameters())


DTYPES = ("float32", "bfloat16")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_train_step(*, batch_per_view: int, image_size: int = 32, width: float = 1.0,
                    channels_last: bool, seed: int = 0, temperature: float = 0.5,
                    dtype: str = "float32", device: str | torch.device | None = None,
                    compile_model: bool = False):
    """A closure running one SGD update on a fixed batch and returning the loss as a float.

    On CPU uses every core this process may run on (one thread each). `channels_last`: NHWC
    memory format for the model and the input (oneDNN's preferred CPU layout, and cuDNN's for
    bfloat16). `dtype="bfloat16"`: the forward pass under bfloat16 autocast. `device`: default
    the GPU if PyTorch sees one, else the CPU. `compile_model`: the model's forward and backward
    passes compiled by `torch.compile` (Inductor; the compilation happens in the first call).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cpu":
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
        torch.set_num_threads(cores)
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(seed)
    model = SimCLRResNet18(width=width)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    forward = torch.compile(model) if compile_model else model  # Shares the model's parameters.
    views = torch.randn(2 * batch_per_view, 3, image_size, image_size)
    views = views.to(device).contiguous(memory_format=memory_format)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            z = forward(views)  # Both views in one pass, as the JAX step.
        loss = nt_xent(z[:batch_per_view].float(), z[batch_per_view:].float(), temperature)
        loss.backward()
        optimizer.step()
        return float(loss.detach())  # The host sync, as `block_until_ready` on the JAX side.

    return step, model


def matmul_flops_per_second(dtype: str = "float32", size: int | None = None,
                            repeats: int = 5) -> dict:
    """As `bench.flops.measured_matmul_flops_per_second`, for PyTorch on its default device."""
    device = default_device()
    size = size or default_matmul_size(device.type)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    a, b = (torch.randn(size, size, device=device).to(torch_dtype) for _ in range(2))
    best = min(time_calls(lambda: (a @ b).sum().item(), repeats))  # .item(): the host sync
    return {"flops_per_second": 2 * size**3 / best, "size": size, "dtype": dtype,
            "seconds": best, "device": str(device)}
