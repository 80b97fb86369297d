"""DistributedDataParallel helpers: this process's place in the run (:class:`Dist`), the process group, and
BatchNorm synchronised over ranks (``SyncBatchNorm`` on CUDA, the differentiable all-reduce
:class:`DistBatchNorm3d` on CPU/gloo)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from ..bundle import resolve_device

__all__ = ["Dist", "DistBatchNorm3d", "all_reduce_sum", "setup_distributed", "sync_batchnorm", "teardown_distributed"]


@dataclass
class Dist:
    """This process's place in a (possibly single-process) distributed run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over ranks."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        tdist.all_reduce(t)
        return t.tolist()

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's values on every rank."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        tdist.broadcast(t, 0)
        return t.tolist()

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    @property
    def comm_device(self) -> torch.device:
        return self.device if tdist.is_initialized() and tdist.get_backend() == "nccl" else torch.device("cpu")


def setup_distributed(device: str = "auto") -> Dist:
    """Join the process group under ``torchrun`` (NCCL on CUDA, gloo on CPU); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=resolve_device(device))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev)


def teardown_distributed(dist: Dist) -> None:
    if dist.active and tdist.is_initialized():
        tdist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of every rank's copy is summed too."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = tensor.clone()
        tdist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.clone()
        tdist.all_reduce(grad)
        return grad


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks, differentiable."""
    return _AllReduceSum.apply(tensor)


class DistBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d whose training statistics are taken over all ranks (differentiable all-reduce).

    ``nn.SyncBatchNorm`` only runs on GPUs; this works with gloo on CPU. Same parameters and buffers as
    ``BatchNorm3d``, so state dicts are interchangeable. Outside a process group it is a plain BatchNorm3d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3, 4)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        tdist.all_reduce(count)
        n = float(count[0])
        mean = all_reduce_sum(x.sum(dims, dtype=torch.float64)) / n
        centred = x - mean.to(x.dtype).view(1, -1, 1, 1, 1)
        var = all_reduce_sum((centred.double() ** 2).sum(dims)) / n
        inv = torch.rsqrt(var + self.eps).to(x.dtype)
        y = centred * inv.view(1, -1, 1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                unbiased = var * n / max(n - 1.0, 1.0)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
                self.num_batches_tracked.add_(1)
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace BatchNorm3d layers by synchronised ones (SyncBatchNorm on CUDA, DistBatchNorm3d elsewhere)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm3d:
            new = DistBatchNorm3d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            sync_batchnorm(child, device)
    return model
