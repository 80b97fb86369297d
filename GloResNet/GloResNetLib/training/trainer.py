"""Training one cross-validation fold: AdamW + cosine, mixup, class weights, AMP, checkpoints, resume, DDP.

The recipe follows the GloResNet authors' code (its defaults: the fields of :class:`~.config.TrainConfig`):
AdamW on all parameters, cosine schedule over the epochs (stepped per epoch; optional linear warm-up), mixup
with one lambda per batch, class weights ``N / (2 N_c)`` from the training fold, random left-right flips.

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

Around it: :mod:`.distributed` (DDP), :mod:`.stopping` (Ctrl-C / SIGTERM), :mod:`.checkpoints`, :mod:`.amp`
(mixed precision, the evaluation pass) and :mod:`.recipe` (seeds, class weights, schedule, checkpoint choice).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import GloResNetError, InputError
from ..io import atomic_path, write_text_atomic
from ..models import build_model, load_pretrained_weights
from .amp import amp_dtype, autocast, predict_outputs
from .augment import augment, batch_count, one_hot, plan_batch, soft_cross_entropy
from .cache import VolumeStore
from .checkpoints import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import Dist, sync_batchnorm
from .folds import Split
from .metrics import binary_metrics, epoch_metrics, event_metrics
from .progress import Reporter
from .recipe import class_weights, is_improvement, lr_factor, seed_for, selection_score, weighted_log_loss
from .stopping import StopSignal, TrainingStopped

__all__ = ["FoldTrainer"]

log = logging.getLogger("GloResNetLib.training")


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
        self.cw_t = torch.tensor(self.cw, dtype=torch.float32, device=self.device) if self.cw is not None else None
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
        model = build_model(cfg.arch, self.num_outputs, **cfg.model_params)
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
                self.net = DDP(self._network(), device_ids=ids, forward_sync_buffers=False)
            except TypeError:  # torch without forward_sync_buffers
                self.net = DDP(self._network(), device_ids=ids, broadcast_buffers=False)
        else:
            self.net = self._network()
        try:  # the fused kernel is several times faster on CPU and GPU
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (TypeError, RuntimeError):  # older torch or an unsupported device
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: lr_factor(e, cfg.epochs, cfg.warmup_epochs))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.epoch, self.step0 = 0, 0
        self.partial = [0.0, 0.0, 0.0, 0.0]  # loss sum, count, data seconds, step seconds of a cut epoch
        self.history: list[dict[str, Any]] = []
        self.best_score: float | None = None
        self.best_epoch = -1
        self.stopped_early = False

    def _network(self) -> torch.nn.Module:
        """The module the training steps run (DDP wraps it): the model; subclasses may return more outputs."""
        return self.model

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

    def _predict(
        self, indices: np.ndarray, per_sample: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> np.ndarray:
        """:func:`predict_outputs` of samples with this run's TTA, evaluation batch size and precision."""
        return predict_outputs(
            self.model,
            self.store,
            indices,
            self.device,
            self.cfg.tta,
            max(1, self.cfg.batch_size // self.cfg.grad_accum),
            self.dtype,
            per_sample,
        )

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
                    score = selection_score(cfg.selection, val_loss, vm, e)
                    improved = float(is_improvement(score, self.best_score))
                    if improved:
                        self.best_score, self.best_epoch = score, e
                        save_checkpoint(self.fold_dir / "best.pt", {"model": self.model.state_dict(), "epoch": e})
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

    def _progress_at(self, epoch: int) -> tuple[float, float | None]:
        """(fraction, eta_s) of the whole run once ``epoch`` of this fold is done (the fold's every epoch after an
        early stop)."""
        cfg = self.cfg
        return self.reporter.at(self.fold_pos * cfg.epochs + (cfg.epochs if self.stopped_early else epoch + 1))

    def _write_fold_files(self, header: list[str] | None, rows: list[list[Any]], result: dict[str, Any]) -> None:
        """Write the fold's ``predictions.csv`` (``header`` None: none), ``model.safetensors`` (the model as it
        is now) and ``result.json``, each atomically, then delete its checkpoints."""
        from safetensors.torch import save_file

        if header is not None:
            text = io.StringIO()
            w = csv.writer(text, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
            write_text_atomic(self.fold_dir / "predictions.csv", text.getvalue())
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(self.fold_dir / "model.safetensors") as tmp:
            save_file(state, str(tmp))
        write_text_atomic(self.fold_dir / "result.json", json.dumps(result, indent=1) + "\n")
        for name in ("last.pt", "best.pt"):
            (self.fold_dir / name).unlink(missing_ok=True)

    def _report_epoch(self, r: dict[str, Any], tb) -> None:
        cfg, e = self.cfg, r["epoch"]
        fraction, eta = self._progress_at(e)
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
        self.reporter.postfix(f"fold {self.fold} ep {e + 1} loss {r['train_loss']:.3f} val {r['val_loss']:.3f}")
        if tb is not None:
            for key in ("train_loss", "val_loss", "val_auc", "val_accuracy", "lr"):
                if r[key] is not None:
                    tb.add_scalar(key, r[key], e)
            tb.flush()

    def _finish(self) -> dict[str, Any]:
        """Evaluate the selected checkpoint on the test fold; write predictions, weights and result.json."""
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
        header = ["index", "path", "subject", "session", "label", "fold", "probability", "predicted"]
        rows = []
        for i, p in zip(test, probs):
            s = self.samples[int(i)]
            rows.append(
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
        self._write_fold_files(header, rows, result)
        log.info(
            "fold %d finished: best epoch %d; test accuracy %.3f, AUC %s",
            self.fold,
            self.best_epoch + 1,
            tm["accuracy"],
            "n/a" if tm["auc"] is None else f"{tm['auc']:.3f}",
        )
        self.reporter.emit({"event": "fold_end", "fold": self.fold, "metrics": event_metrics(tm)})
        return result
