"""Training one cross-validation fold: AdamW + cosine, mixup, class weights, AMP, checkpoints, resume, DDP.

Defaults follow the GloResNet authors' code: AdamW (lr 2e-3, weight decay 0.01, on all parameters), cosine
schedule over the epochs (stepped per epoch; optional linear warm-up), batch 32, mixup alpha 1.0 with one
lambda per batch, class weights ``N / (2 N_c)`` from the training fold, random left-right flip p=0.5.

Batches: the training fold is shuffled per epoch and cut into ``ceil(n / batch_size)`` batches of near-equal
size; where that would leave a batch of one (which BatchNorm cannot use), one step fewer: the remainder is
folded into the other batches and the log says so (:func:`~.augment.batch_count`). The loss of a batch
is the mean over its samples of ``-sum_c w_c y_c log p_c`` with mixed (soft) targets ``y``. ``grad_accum``
splits each optimizer batch into that many micro-batches (same optimizer batch, less memory; BatchNorm sees
the micro-batch).

Determinism and resume: every random choice of an epoch (order) and of a step (mixup lambda, partners,
flips, affines, torch RNG) is drawn from a generator seeded by (seed, fold, epoch[, step]), so a run
resumed from any checkpoint - even one saved mid-epoch on Ctrl-C - continues exactly as if never stopped.
``last.pt`` (model, optimizer, scheduler, AMP scaler, RNG state, history, position) is rewritten
atomically after every epoch and on a stop; ``best.pt`` holds the weights of the selected epoch.

DistributedDataParallel (``torchrun``): every rank draws the same global batch and plan; rank r takes its
share of each (micro-)batch and loads those samples and their mixup partners, so each global batch is
exactly what a single process would see. The loss is scaled so that DDP's gradient average equals the
single-process gradient, and BatchNorm is synchronised over ranks (``SyncBatchNorm`` on CUDA, the
differentiable all-reduce :class:`DistBatchNorm3d` on CPU/gloo). The result matches a single process up to
floating-point summation order. Rank 0 alone evaluates, writes files and reports; decisions are broadcast.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from ..bundle import resolve_device
from ..errors import GloResNetError, InputError
from ..io import atomic_path, write_text_atomic
from ..models import build_model, load_pretrained_weights
from .augment import augment, batch_count, one_hot, plan_batch, soft_cross_entropy
from .cache import VolumeStore
from .config import TrainConfig
from .folds import Split
from .metrics import binary_metrics, epoch_metrics, event_metrics
from .progress import Reporter

log = logging.getLogger("GloResNetLib.training")

CHECKPOINT_VERSION = 1


class TrainingStopped(Exception):
    """Training was stopped on request (Ctrl-C, SIGTERM or a stop event) after saving a checkpoint."""

    def __init__(self, run_dir: Path, fold: int, epoch: int) -> None:
        super().__init__(
            f"training stopped at fold {fold}, epoch {epoch}; resume with "
            f"`gloresnet train --resume {run_dir}`"
        )
        self.run_dir, self.fold, self.epoch = run_dir, fold, epoch


# ------------------------------------------------------------------------------------------- distributed


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
        return (
            self.device if tdist.is_initialized() and tdist.get_backend() == "nccl" else torch.device("cpu")
        )


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
        if not (
            self.training and tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1
        ):
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


# ------------------------------------------------------------------------------------------- stop handling


class StopSignal:
    """Turns SIGINT/SIGTERM (main thread only) and an optional ``threading.Event`` into a polled flag.

    A second Ctrl-C while the checkpoint is being written restores the default handler and interrupts.
    """

    def __init__(self, event: threading.Event | None = None) -> None:
        self.event = event
        self.flag = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            # SIGBREAK: what a graceful stop (CTRL_BREAK_EVENT) delivers on Windows
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)):
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.flag and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.flag = True
        log.warning(
            "stop requested (%s): saving a checkpoint at the end of this step", signal.Signals(signum).name
        )

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def requested(self) -> bool:
        return self.flag or bool(self.event is not None and self.event.is_set())


# ------------------------------------------------------------------------------------------- helpers


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, fold, epoch, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]) >> 1


def class_weights(labels: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """``N / (K * N_c)`` per class (balanced weights, as the GloResNet authors)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    return np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)


def lr_factor(epoch: int, epochs: int, warmup: int = 0) -> float:
    """Learning-rate multiplier of an epoch: linear warm-up, then cosine from 1 to 0 over the rest."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(1, epochs - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / span))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save atomically (a kill never leaves a corrupt file)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint as data (``weights_only=True``)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        raise InputError(f"{path}: unreadable checkpoint ({exc.__class__.__name__}: {exc})") from None


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 where supported, else float16, on CUDA only; None = full precision."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_outputs(
    model: nn.Module,
    store: VolumeStore,
    indices: np.ndarray,
    device: torch.device,
    tta: bool = True,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
    per_sample: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """One value per sample (eval mode): ``per_sample(outputs)`` (default: softmax P(class 1)); with ``tta``
    the mean over the identity and the left-right flip."""
    per_sample = per_sample or (lambda y: torch.softmax(y, dim=1)[:, 1])
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        x = torch.from_numpy(store.batch(idx)).unsqueeze(1).to(device)
        views = [x, x.flip(2)] if tta else [x]
        with autocast(device, dtype):
            y = model(torch.cat(views))
        out.append(per_sample(y.float()).reshape(len(views), len(idx)).mean(0).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def weighted_log_loss(labels: np.ndarray, prob: np.ndarray, weights: np.ndarray | None) -> float:
    """Class-weighted mean cross-entropy of predicted P(BI) (weights normalised by their sum)."""
    p = np.clip(np.where(labels == 1, prob, 1.0 - prob), 1e-7, 1.0)
    w = weights[labels] if weights is not None else np.ones(len(labels))
    return float(-(w * np.log(p)).sum() / w.sum())


def selection_score(metric: str, val_loss: float, m: dict[str, Any]) -> float:
    """Higher is better: -loss, or the metric (a missing AUC falls back to -loss)."""
    if metric == "loss":
        return -val_loss
    value = m.get(metric)
    return -val_loss if value is None else float(value)


def is_improvement(score: float, best: float | None) -> bool:
    """True when ``score`` beats ``best`` (None: nothing chosen yet); a NaN or infinite score never does."""
    return math.isfinite(score) and (best is None or score > best + 1e-12)


# ------------------------------------------------------------------------------------------- fold trainer


class FoldTrainer:
    """Trains one fold in ``fold_dir``; :meth:`run` returns the fold's result dict (``result.json``)."""

    #: network outputs (2 classes; a regression subclass uses 1)
    num_outputs = 2

    def __init__(
        self,
        cfg: TrainConfig,
        split: Split,
        store: VolumeStore,
        labels: np.ndarray,
        dist: Dist,
        run_dir: Path,
        reporter: Reporter,
        stop: StopSignal,
        fold_pos: int,
        samples: list,
        tb_factory: Callable[[int, int], Any] | None = None,
    ) -> None:
        self.cfg, self.split, self.store, self.labels, self.dist = cfg, split, store, labels, dist
        self.run_dir, self.reporter, self.stop, self.fold_pos = run_dir, reporter, stop, fold_pos
        self.samples = samples
        self.fold = split.fold
        self.fold_dir = run_dir / f"fold_{self.fold}"
        self.tb_factory = tb_factory
        self.device = dist.device
        self.dtype = amp_dtype(self.device, cfg.amp)
        self.cw = class_weights(labels[split.train]) if cfg.class_weights else None
        self.cw_t = (
            torch.tensor(self.cw, dtype=torch.float32, device=self.device) if self.cw is not None else None
        )
        self.n_batches, self.batch_note = batch_count(len(split.train), cfg.batch_size, cfg.grad_accum)
        if len(split.train) < 2 * dist.world * cfg.grad_accum:
            raise InputError(
                f"fold {self.fold}: {len(split.train)} training volumes cannot be split into "
                f"{dist.world} process(es) x {cfg.grad_accum} micro-batch(es)"
            )

    # -- model and state -----------------------------------------------------------------------------

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(seed_for(cfg.seed, self.fold, 1))
        model = build_model(cfg.arch, self.num_outputs, **cfg.arch_params)
        self.pretrained_report = None
        if cfg.pretrained:
            report = load_pretrained_weights(model, cfg.pretrained, arch=cfg.arch)
            self.pretrained_report = report.summary()
            if self.dist.main and self.fold_pos == 0:
                log.info("pretrained weights %s: %s", cfg.pretrained, report.summary())
        if self.dist.active:
            model = sync_batchnorm(model, self.device)
        self.model = model.to(self.device)
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            try:  # buffers are identical on every rank (synchronised BatchNorm): no per-forward broadcast
                self.net = DDP(self.model, device_ids=ids, forward_sync_buffers=False)
            except TypeError:  # torch without forward_sync_buffers
                self.net = DDP(self.model, device_ids=ids, broadcast_buffers=False)
        else:
            self.net = self.model
        try:  # the fused kernel is several times faster on CPU and GPU
            self.opt = torch.optim.AdamW(
                self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
            )
        except (TypeError, RuntimeError):  # older torch or an unsupported device
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda e: lr_factor(e, cfg.epochs, cfg.warmup_epochs)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.epoch, self.step0 = 0, 0
        self.partial = [0.0, 0.0, 0.0, 0.0]  # loss sum, count, data seconds, step seconds of a cut epoch
        self.history: list[dict[str, Any]] = []
        self.best_score: float | None = None
        self.best_epoch = -1
        self.stopped_early = False

    def _state(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "fold": self.fold,
            "epoch": self.epoch,
            "step": self.step0,
            "partial": list(self.partial),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": json.dumps(self.history),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "config": self.cfg.to_json(),
        }

    def _restore(self, path: Path) -> None:
        ck = load_checkpoint(path)
        if ck.get("version") != CHECKPOINT_VERSION or ck.get("fold") != self.fold:
            raise InputError(f"{path}: checkpoint of another fold or library version")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step0, self.partial = int(ck["epoch"]), int(ck["step"]), list(ck["partial"])
        self.history = json.loads(ck["history"])
        self.best_score, self.best_epoch = ck["best_score"], int(ck["best_epoch"])
        self.stopped_early = bool(ck["stopped_early"])
        torch.set_rng_state(ck["torch_rng"])
        if ck["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        log.info("fold %d: resumed from %s (epoch %d, step %d)", self.fold, path.name, self.epoch, self.step0)

    # -- training ------------------------------------------------------------------------------------

    def _inputs(self, bidx: np.ndarray, pos: np.ndarray, plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented, mixed inputs and soft targets of batch positions ``pos`` (loads partners too)."""
        partners = plan.perm[pos]
        need = np.unique(np.concatenate([pos, partners])) if plan.mixing else pos
        where = {int(p): j for j, p in enumerate(need)}
        x = torch.from_numpy(self.store.batch(bidx[need])).unsqueeze(1).to(self.device, non_blocking=True)
        x = augment(x, plan.flips[need], None if plan.thetas is None else plan.thetas[need])
        labels = torch.from_numpy(self.labels[bidx]).to(self.device)
        xi = x[[where[int(p)] for p in pos]]
        yi = one_hot(labels[torch.as_tensor(pos)])
        if plan.mixing:
            xp = x[[where[int(p)] for p in partners]]
            yp = one_hot(labels[torch.as_tensor(partners)])
            xi = plan.lam * xi + (1.0 - plan.lam) * xp
            yi = plan.lam * yi + (1.0 - plan.lam) * yp
        return xi, yi

    def _per_sample_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss per sample (B,): class-weighted soft cross-entropy (subclasses: other tasks)."""
        return soft_cross_entropy(logits, targets, self.cw_t)

    def _train_epoch(self) -> tuple[float, float, float, bool]:
        """One epoch from ``self.step0``; returns (mean loss, data s, total s, stopped)."""
        cfg, dist, e = self.cfg, self.dist, self.epoch
        order = np.random.default_rng([cfg.seed, self.fold, e, 0]).permutation(self.split.train)
        batches = np.array_split(order, self.n_batches)
        loss_sum, count, data_s, step_s = self.partial
        self.net.train()
        for step in range(self.step0, self.n_batches):
            if dist.all_sum([float(self.stop.requested)])[0] > 0:  # every rank stops at the same step
                self.step0, self.partial = step, [loss_sum, count, data_s, step_s]
                return loss_sum / max(count, 1), data_s, step_s, True
            t_step = time.perf_counter()
            bidx = batches[step]
            plan = plan_batch(
                np.random.default_rng([cfg.seed, self.fold, e, 1, step]),
                len(bidx),
                cfg.mixup_alpha,
                cfg.flip_prob,
                cfg.affine_degrees,
                cfg.affine_scale,
            )
            torch.manual_seed(seed_for(cfg.seed, self.fold, e, step, 2))
            self.opt.zero_grad(set_to_none=True)
            local_loss, local_n = 0.0, 0
            micro = np.array_split(np.arange(len(bidx)), cfg.grad_accum)
            for m, mpos in enumerate(micro):
                pos = np.array_split(mpos, dist.world)[dist.rank]
                t0 = time.perf_counter()
                x, y = self._inputs(bidx, pos, plan)
                data_s += time.perf_counter() - t0
                sync = self.net.no_sync() if dist.active and m < len(micro) - 1 else contextlib.nullcontext()
                with sync:
                    with autocast(self.device, self.dtype):
                        logits = self.net(x)
                    per_sample = self._per_sample_loss(logits, y)
                    loss = per_sample.sum() * (dist.world / len(bidx))
                    self.scaler.scale(loss).backward()
                local_loss += float(per_sample.detach().sum())
                local_n += len(pos)
            self.scaler.step(self.opt)
            self.scaler.update()
            total_loss, total_n = dist.all_sum([local_loss, local_n])
            loss_sum += total_loss
            count += total_n
            step_s += time.perf_counter() - t_step
            if dist.main:
                units = self.fold_pos * cfg.epochs + e + (step + 1) / self.n_batches
                fraction, _ = self.reporter.at(units)
                self.reporter.emit(
                    {
                        "event": "step",
                        "fold": self.fold,
                        "epoch": e,
                        "step": step,
                        "steps": self.n_batches,
                        "loss": total_loss / max(total_n, 1),
                        "fraction": fraction,
                    }
                )
        self.step0, self.partial = 0, [0.0, 0.0, 0.0, 0.0]
        return loss_sum / max(count, 1), data_s, step_s, False

    def _predict(self, indices: np.ndarray, per_sample: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> np.ndarray:
        """:func:`predict_outputs` of samples with this run's TTA, evaluation batch size and precision."""
        return predict_outputs(self.model, self.store, indices, self.device, self.cfg.tta,
                               max(1, self.cfg.batch_size // self.cfg.grad_accum), self.dtype, per_sample)

    def _evaluate(self, indices: np.ndarray, full: bool = False) -> tuple[np.ndarray, dict[str, Any], float]:
        probs = self._predict(indices)
        y = self.labels[indices]
        metrics = (binary_metrics if full else epoch_metrics)(y, probs, self.cfg.threshold)
        return probs, metrics, weighted_log_loss(y, probs, self.cw)

    def _save_last(self) -> None:
        if self.dist.main:
            save_checkpoint(self.fold_dir / "last.pt", self._state())

    def run(self) -> dict[str, Any]:
        """Train (or resume) this fold, test the selected checkpoint on the test fold, write its files."""
        cfg, dist = self.cfg, self.dist
        self._build()
        if dist.main:
            self.fold_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.fold_dir.glob(".*.tmp*"):  # temporary files of a killed process
                stale.unlink(missing_ok=True)
        dist.barrier()
        last = self.fold_dir / "last.pt"
        if last.is_file():
            self._restore(last)
        tb = self.tb_factory(self.fold, self.epoch) if (self.tb_factory and dist.main) else None
        if dist.main:
            log.info(
                "fold %d: %d train / %d val / %d test volumes; class weights %s; %d steps per epoch",
                self.fold,
                len(self.split.train),
                len(self.split.val),
                len(self.split.test),
                None if self.cw is None else np.round(self.cw, 3).tolist(),
                self.n_batches,
            )
            if self.batch_note:
                log.info("fold %d: %s", self.fold, self.batch_note)
        try:
            while self.epoch < cfg.epochs and not self.stopped_early:
                e = self.epoch
                lr = self.opt.param_groups[0]["lr"]
                train_loss, data_s, step_s, stopped = self._train_epoch()
                if stopped:
                    self._save_last()
                    dist.barrier()
                    raise TrainingStopped(self.run_dir, self.fold, e)
                t0 = time.perf_counter()
                improved = early = 0.0
                record: dict[str, Any] = {}
                if dist.main:
                    _, vm, val_loss = self._evaluate(self.split.val)
                    score = selection_score(cfg.selection, val_loss, vm)
                    improved = float(is_improvement(score, self.best_score))
                    if improved:
                        self.best_score, self.best_epoch = score, e
                        save_checkpoint(
                            self.fold_dir / "best.pt", {"model": self.model.state_dict(), "epoch": e}
                        )
                    if cfg.patience is not None and e - self.best_epoch >= cfg.patience:
                        early = 1.0
                    record = {
                        "epoch": e,
                        "train_loss": train_loss,
                        "val_loss": val_loss,
                        "val_auc": vm["auc"],
                        "val_accuracy": vm["accuracy"],
                        "val_balanced_accuracy": vm["balanced_accuracy"],
                        "lr": lr,
                        "score": score,
                        "train_s": step_s,
                        "data_s": data_s,
                        "eval_s": time.perf_counter() - t0,
                    }
                improved, early = dist.broadcast([improved, early])
                if improved and not dist.main:
                    self.best_epoch = e
                self.history.append(record)
                self.sched.step()
                self.epoch = e + 1
                self.stopped_early = bool(early)
                self._save_last()
                if dist.main:
                    self._report_epoch(record, tb)
                dist.barrier()
            if dist.main:
                result = self._finish()
            else:
                result = {}
            dist.barrier()
            return result
        finally:
            if tb is not None:
                tb.close()

    def _report_epoch(self, r: dict[str, Any], tb) -> None:
        cfg, e = self.cfg, r["epoch"]
        units = self.fold_pos * cfg.epochs + (cfg.epochs if self.stopped_early else e + 1)
        fraction, eta = self.reporter.at(units)
        self.reporter.emit(
            {
                "event": "epoch",
                "fold": self.fold,
                "epoch": e,
                "epochs": cfg.epochs,
                "train_loss": r["train_loss"],
                "val_loss": r["val_loss"],
                "val_auc": r["val_auc"],
                "val_accuracy": r["val_accuracy"],
                "lr": r["lr"],
                "fraction": fraction,
                "eta_s": eta,
            }
        )
        auc = "n/a" if r["val_auc"] is None else f"{r['val_auc']:.3f}"
        share = r["data_s"] / r["train_s"] if r["train_s"] > 0 else 0.0
        log.info(
            "fold %d epoch %d/%d: train loss %.4f, val loss %.4f, val AUC %s, val acc %.3f, lr %.2e, "
            "%.1fs (data %.1f%%)%s%s",
            self.fold,
            e + 1,
            cfg.epochs,
            r["train_loss"],
            r["val_loss"],
            auc,
            r["val_accuracy"],
            r["lr"],
            r["train_s"] + r["eval_s"],
            100 * share,
            " *" if self.best_epoch == e else "",
            " early stop" if self.stopped_early else "",
        )
        self.reporter.postfix(
            f"fold {self.fold} ep {e + 1} loss {r['train_loss']:.3f} val {r['val_loss']:.3f}"
        )
        if tb is not None:
            for key in ("train_loss", "val_loss", "val_auc", "val_accuracy", "lr"):
                if r[key] is not None:
                    tb.add_scalar(key, r[key], e)
            tb.flush()

    def _finish(self) -> dict[str, Any]:
        """Evaluate the selected checkpoint on the test fold; write predictions, weights and result.json."""
        from safetensors.torch import save_file

        best = self.fold_dir / "best.pt"
        if not best.is_file() or self.best_epoch < 0:
            raise GloResNetError(
                f"fold {self.fold}: the validation score ({self.cfg.selection}) was not finite in any of "
                f"{len(self.history)} epoch(s) (NaN or Inf: the training diverged; try a lower --lr), so no "
                "checkpoint could be chosen"
            )
        self.model.load_state_dict(load_checkpoint(best)["model"])
        test = self.split.test
        probs, tm, test_loss = self._evaluate(test, full=True)
        rows = io.StringIO()
        w = csv.writer(rows, lineterminator="\n")
        w.writerow(["index", "path", "subject", "session", "label", "fold", "probability", "predicted"])
        for i, p in zip(test, probs):
            s = self.samples[int(i)]
            w.writerow(
                [
                    int(i),
                    str(s.path),
                    s.subject,
                    s.session,
                    int(self.labels[i]),
                    self.fold,
                    repr(float(p)),
                    int(p >= self.cfg.threshold),
                ]
            )
        write_text_atomic(self.fold_dir / "predictions.csv", rows.getvalue())
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(self.fold_dir / "model.safetensors") as tmp:
            save_file(state, str(tmp))
        result = {
            "fold": self.fold,
            "best_epoch": self.best_epoch + 1,  # counted from 1, as in the log (history's "epoch" from 0)
            "best_epoch_base": 1,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "selection": self.cfg.selection,
            "protocol": self.cfg.protocol,
            "class_weights": None if self.cw is None else self.cw.tolist(),
            "n_train": len(self.split.train),
            "n_val": len(self.split.val),
            "n_test": len(test),
            "pretrained": self.pretrained_report,
            "test": tm,
            "test_loss": test_loss,
            "history": self.history,
        }
        write_text_atomic(self.fold_dir / "result.json", json.dumps(result, indent=1) + "\n")
        for name in ("last.pt", "best.pt"):
            (self.fold_dir / name).unlink(missing_ok=True)
        log.info(
            "fold %d finished: best epoch %d; test accuracy %.3f, AUC %s",
            self.fold,
            self.best_epoch + 1,
            tm["accuracy"],
            "n/a" if tm["auc"] is None else f"{tm['auc']:.3f}",
        )
        self.reporter.emit({"event": "fold_end", "fold": self.fold, "metrics": event_metrics(tm)})
        return result
