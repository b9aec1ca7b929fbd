"""Training on several processes (DDP): batch normalization over the global batch, on any device.

- ``all_reduce``: a differentiable sum over processes (its backward all-reduces the gradients).
- ``CPUSyncBatchNorm``: ``torch.nn.SyncBatchNorm`` only runs on GPUs (and a few other accelerators); on the CPU it
  raises, and DDP refuses it on CPU modules. This class fills that gap: the batch mean and variance are sums
  all-reduced across processes by ``all_reduce``, so both the forward and the backward equal those of one process
  holding the whole batch. On GPUs torch's class is used (``convert_sync_batchnorm``).
- ``SyncBatchNormPlugin``: the Lightning plugin that converts a model's BatchNorm layers; the ``adapt`` CLI adds it
  whenever ``trainer.sync_batchnorm`` is true. In Python: ``Trainer(sync_batchnorm=True,
  plugins=[SyncBatchNormPlugin()])``.

Nets stay plain torch (``adapt.nets``): what needs a process group or a Trainer lives here. A loss's mean over the
labelled pixels of the global batch is ``adapt.losses.global_batch_mean`` (plain torch; the tasks give it the
strategy's sum over processes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes, differentiable: the gradient of each process's input is the sum of all processes'
    output gradients (each process's loss depends on every input through the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    """float [*] -> float [*], the sum of ``x`` over the processes of ``group``, differentiable."""
    return _AllReduceSum.apply(x, group)


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalization whose training statistics cover all processes' CPU tensors (two all-reduces per layer:
    the sums, then the squared deviations from the global mean, as a two-pass variance). Outside a process group,
    in eval mode or with one process it is plain batch normalization."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float [B, C, *] -> float [B, C, *]."""
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if not (self.training and group is not None and dist.get_world_size(group) > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dims), count]), group=group)
        n = sums[-1]
        mean = sums[:-1] / n
        centered = x - mean.view(shape)
        var = all_reduce(centered.pow(2).sum(dims), group=group) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), momentum)
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_sync_batchnorm(module: nn.Module, cpu: bool) -> nn.Module:
    """``module`` with every BatchNorm layer synchronized across processes, keeping its parameters and buffers:
    ``CPUSyncBatchNorm`` when the model runs on CPUs, else ``torch.nn.SyncBatchNorm``."""
    if not cpu:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, cpu))
    return out


class SyncBatchNormPlugin(TorchSyncBatchNorm):
    """Lightning ``LayerSync`` plugin: ``trainer.sync_batchnorm`` on CPUs as well as GPUs (the device is the
    strategy's; on CPUs the layers stay ``CPUSyncBatchNorm`` after the fit, which is plain batch norm there)."""

    def apply(self, model: nn.Module) -> nn.Module:
        # private: LayerSync.apply receives only the model, and the device it will train on is known only to the
        # strategy, reachable through the LightningModule's _trainer (None when the model is not in a fit)
        trainer = getattr(model, "_trainer", None)
        device = trainer.strategy.root_device if trainer is not None else next(model.parameters()).device
        return convert_sync_batchnorm(model, cpu=device.type == "cpu")
