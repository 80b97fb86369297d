"""Inference-only execution of the ResNet models: same function, fewer passes over memory.

:func:`features` computes ``model.features(x)`` for a model in eval mode through a prepared copy, kept warm
between calls (one per model object, device and dtype; rebuilt when the model's weights change):

- BatchNorm folded into the preceding convolution (exact in real arithmetic: eval-mode BN is affine);
- activations in ``channels_last_3d``, the layout oneDNN's and cuDNN's fastest 3D kernels use;
- on CPU, the stem (7^3 convolution of the single input channel + max-pool) runs on oneDNN's blocked
  layout, which its direct convolution writes natively: converting that 64-channel half-resolution output
  (67 MB per view at 128^3) to a strided torch layout cost more than the pooling itself. ReLU is applied
  after the max-pool (they commute) on 8x fewer values;
- on CPU, convolution weights pre-packed once per input shape for oneDNN, with ReLU fused into the
  convolution and the residual addition + ReLU fused into each block's second convolution, in place;
- on CPU, TTA views go through in micro-batches of :data:`CPU_BATCH`.

Importing this module also asks PyTorch to back large CPU tensors with transparent huge pages
(``THP_MEM_ALLOC_ENABLE=1``, a PyTorch setting read at the process's first large allocation, so it only
takes effect if nothing large was allocated before): every activation here is tens of megabytes, freshly
mapped at each call, and faulting it in 4 KiB pages cost as much as the convolution writing it (measured
figures: CHANGELOG.md). Set ``THP_MEM_ALLOC_ENABLE=0`` to opt out.

Every prepared copy is checked against the original model on a small input when it is built; if anything
disagrees or fails (another torch version, another architecture) the original model is used unchanged.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

log = logging.getLogger(__name__)

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

CL = torch.channels_last_3d
#: CPU micro-batch (views per pass).
CPU_BATCH = 2

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_cache_all: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _mkldnn_ops() -> bool:
    """oneDNN's fused convolution ops (used by torch.compile's CPU backend) are present in this torch."""
    ops = getattr(torch.ops, "mkldnn", None)
    return bool(
        torch.backends.mkldnn.is_available()
        and ops is not None
        and all(
            hasattr(ops, n)
            for n in ("_convolution_pointwise", "_convolution_pointwise_", "_reorder_convolution_weight")
        )
    )


@dataclass
class _Conv:
    """A convolution with BatchNorm folded in; ``pack`` turns on oneDNN weights pre-packed per input shape."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    pack: bool = False
    packed: dict = field(default_factory=dict)

    @classmethod
    def fold(cls, conv: nn.Conv3d, bn: nn.Module | None, device: torch.device, dtype: torch.dtype, pack: bool) -> _Conv:
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise NotImplementedError("only plain convolutions are folded")
        with torch.no_grad():
            weight, bias = conv.weight.detach(), conv.bias
            if isinstance(bn, nn.BatchNorm3d):
                weight, bias = fuse_conv_bn_weights(
                    weight, bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
                )
            bias = bias.detach() if bias is not None else torch.zeros(weight.shape[0])
            weight = weight.detach().to(device, dtype).contiguous(memory_format=CL)
        return cls(weight, bias.to(device, dtype), list(conv.stride), list(conv.padding), list(conv.dilation), pack)

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        w = self.packed.get(key)
        if w is None:
            if len(self.packed) >= 2:  # e.g. TTA micro-batches and single views; bounds memory
                self.packed.clear()
            w = self.packed[key] = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, 1, list(key)
            )
        return w

    def __call__(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        if self.pack:
            return torch.ops.mkldnn._convolution_pointwise(
                x,
                self._packed(x),
                self.bias,
                self.padding,
                self.stride,
                self.dilation,
                1,
                "relu" if relu else "none",
                [],
                "",
            )
        y = F.conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return y.relu_() if relu else y

    def add_relu_(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """relu(conv(x) + other), written into ``other``."""
        if self.pack:
            return torch.ops.mkldnn._convolution_pointwise_(
                other,
                x,
                self._packed(x),
                self.bias,
                self.padding,
                self.stride,
                self.dilation,
                1,
                "add",
                1.0,
                "relu",
                [],
                "",
            )
        return other.add_(F.conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)).relu_()


class _Block:
    def __init__(self, block: nn.Module, device, dtype, pack: bool) -> None:
        down = block.downsample
        self.conv1 = _Conv.fold(block.conv1, block.bn1, device, dtype, pack)
        self.conv2 = _Conv.fold(block.conv2, block.bn2, device, dtype, pack)
        self.down = _Conv.fold(down[0], down[1], device, dtype, pack) if down is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.down(x) if self.down is not None else x
        return self.conv2.add_relu_(self.conv1(x, relu=True), identity)


class FastResNet:
    """Inference-only ``features`` of a :class:`~GloResNetLib.models.resnet.ResNet3D` (see module doc)."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        pack: bool | None = None,
        blocked_stem: bool | None = None,
        all_stages: bool = False,
    ) -> None:
        if model.training:
            raise NotImplementedError("BatchNorm folding needs a model in eval mode")
        pool = model.maxpool
        if not isinstance(pool, nn.Identity) and (
            not isinstance(pool, nn.MaxPool3d) or pool.ceil_mode or _triple(pool.dilation) != (1, 1, 1)
        ):
            raise NotImplementedError("unexpected stem pooling")
        cpu32 = device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
        pack = (cpu32 and _mkldnn_ops()) if pack is None else pack
        self.device, self.dtype = device, dtype
        self.blocked_stem = cpu32 if blocked_stem is None else blocked_stem
        self.stem = _Conv.fold(model.conv1, model.bn1, device, dtype, pack=False)
        self.stem_blocked_weight = None
        if self.blocked_stem:
            s = self.stem
            self.stem_blocked_weight = torch._C._nn.mkldnn_reorder_conv3d_weight(
                s.weight.contiguous().to_mkldnn(), s.padding, s.stride, s.dilation, 1
            )
        self.pool = (
            None
            if isinstance(pool, nn.Identity)
            else (_triple(pool.kernel_size), _triple(pool.stride or pool.kernel_size), _triple(pool.padding))
        )
        stages = model.stages()[0] + (model.stages()[1] if all_stages else ())  # all: up to the last stage
        self.blocks = [_Block(b, device, dtype, pack) for layer in stages for b in layer]

    def convs(self) -> list[_Conv]:
        return [c for b in self.blocks for c in (b.conv1, b.conv2, b.down) if c is not None]

    def stem_conv(self, x: torch.Tensor) -> torch.Tensor:
        """The stem convolution with its BatchNorm folded in (before ReLU and pooling), channels_last_3d."""
        return self.stem(x.to(self.device, self.dtype).contiguous(memory_format=CL))

    def after_stem(self, y: torch.Tensor) -> torch.Tensor:
        """The rest of :meth:`features` from the output of :meth:`stem_conv` (overwritten: ReLU in place)."""
        x = y if self.pool is None else F.max_pool3d(y, *self.pool)
        x = x.relu_().contiguous(memory_format=CL)
        for block in self.blocks:
            x = block(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of the model's ``cam_layer`` (B, C, d, h, w) in channels_last_3d, as ``model.features(x)``."""
        x = x.to(self.device, self.dtype)
        pool = (lambda y: y) if self.pool is None else (lambda y: F.max_pool3d(y, *self.pool))
        if self.blocked_stem:
            c = self.stem
            y = torch.mkldnn_convolution(
                x.contiguous().to_mkldnn(), self.stem_blocked_weight, c.bias, c.padding, c.stride, c.dilation, 1
            )
            x = pool(y).to_dense()
        else:
            x = pool(self.stem(x.contiguous(memory_format=CL)))
        x = x.relu_().contiguous(memory_format=CL)
        for block in self.blocks:
            x = block(x)
        return x


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * 3


def _versions(model: nn.Module) -> tuple[int, ...]:
    return tuple(t._version for t in model.state_dict(keep_vars=True).values())


def _prepare(model: nn.Module, device: torch.device, dtype: torch.dtype, all_stages: bool = False) -> FastResNet | None:
    from .models.resnet import ResNet3D

    if not isinstance(model, ResNet3D) or model.training:
        return None
    if all_stages and model.lesion_mode == "mil":  # the output is not global pooling of the last stage
        return None
    try:
        fast = FastResNet(model, device, dtype, all_stages=all_stages)
        _self_check(model, fast, device, dtype)
        return fast
    except Exception as exc:  # any failure: the original model is always correct
        log.info("fast inference path unavailable (%s: %s); using the model as is", type(exc).__name__, exc)
        try:
            fast = FastResNet(model, device, dtype, pack=False, blocked_stem=False, all_stages=all_stages)
            _self_check(model, fast, device, dtype)
            return fast
        except Exception:
            return None


def _self_check(model: nn.Module, fast: FastResNet, device: torch.device, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, model.conv1.in_channels, 32, 32, 32, generator=gen)  # small: checks the code path
    home = next(model.parameters()).device
    with torch.inference_mode():
        ref = model.features(x.to(home))
        if len(fast.blocks) > sum(len(s) for s in model.stages()[0]):  # all stages: compare the last one
            for stage in model.stages()[1]:
                ref = stage(ref)
        ref = ref.float().cpu()
        got = fast.features(x.to(device)).float().cpu()
    # float32 on CPU agrees to rounding; cuDNN may use TF32 (10-bit mantissa) for both; float16 is coarser
    tol = 5e-2 if dtype != torch.float32 else (1e-3 if device.type == "cpu" else 2e-2)
    err = float((got - ref).abs().max()) / max(float(ref.abs().max()), 1e-6)
    if got.shape != ref.shape or not err <= tol:
        raise RuntimeError(f"prepared model disagrees with the original (relative error {err:.2e})")
    for conv in fast.convs():
        conv.packed.clear()  # weights packed for the check's shapes only


def prepared(
    model: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32, all_stages: bool = False
) -> FastResNet | None:
    """The warm inference copy of ``model`` on ``device`` (built on first use), or None to use the model.

    ``all_stages``: a copy running every residual stage (for the whole network, e.g. occlusion sensitivity)
    instead of those up to the model's ``cam_layer``; kept in its own cache."""
    cache = _cache_all if all_stages else _cache
    entry = cache.get(model)
    key = (str(device), dtype, _versions(model), model.training)
    if entry is not None and entry[0] == key:
        return entry[1]
    fast = _prepare(model, device, dtype, all_stages)
    cache[model] = (key, fast)
    return fast


def cuda_dtype() -> torch.dtype:
    """Compute type on CUDA: float32 (cuDNN may use TF32 as PyTorch allows by default), or float16 with
    ``GLORESNET_CUDA_HALF=1`` (check that predictions agree: ``benchmarks/bench_predict.py --half``)."""
    return torch.float16 if os.environ.get("GLORESNET_CUDA_HALF", "0") == "1" else torch.float32


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model.features(x)`` through the prepared copy when there is one (micro-batched on CPU)."""
    if torch.is_grad_enabled():
        return model.features(x)
    if x.device.type == "cuda":
        fast = prepared(model, x.device, cuda_dtype())
        if fast is None:
            return model.features(x)
        cudnn, before = torch.backends.cudnn, torch.backends.cudnn.benchmark
        cudnn.benchmark = True  # pick the fastest kernels for these shapes (once per shape, then cached)
        try:
            return fast.features(x)
        finally:
            cudnn.benchmark = before
    fast = prepared(model, x.device)
    if fast is None:
        return model.features(x)
    if x.shape[0] <= CPU_BATCH:
        return fast.features(x)
    return torch.cat([fast.features(c) for c in x.split(CPU_BATCH)])


def clear_cache() -> None:
    """Drop every prepared copy (they are rebuilt on demand)."""
    _cache.clear()
    _cache_all.clear()
