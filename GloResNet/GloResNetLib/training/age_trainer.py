"""The brain-age fold trainer (one output, standardised-age targets, L1-type loss, MAE checkpoint choice) and
the regression metrics it reports (:mod:`.age`)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import load_checkpoint
from .config import AgeConfig
from .trainer import FoldTrainer

__all__ = ["PRED_COLUMNS", "AgeFoldTrainer", "mae", "mean_sd", "regression_metrics"]

log = logging.getLogger("GloResNetLib.training")

PRED_COLUMNS = ["index", "path", "subject", "session", "fold", "age_weeks", "predicted_weeks"]


def mae(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error (same unit as the inputs); 0 for empty inputs."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return float(np.abs(true - pred).mean()) if len(true) else 0.0


def regression_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE, mean error (bias, predicted - true) and Pearson r, in weeks."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    r = None
    if len(true) > 1 and np.std(true) > 0 and np.std(pred) > 0:
        r = float(np.corrcoef(true, pred)[0, 1])
    return {
        "n": int(len(true)),
        "mae_weeks": mae(true, pred),
        "rmse_weeks": float(np.sqrt(((true - pred) ** 2).mean())) if len(true) else 0.0,
        "bias_weeks": float((pred - true).mean()) if len(true) else 0.0,
        "pearson_r": r,
    }


def mean_sd(values: list[float]) -> dict[str, Any]:
    """{mean, sd (ddof=1), values}."""
    v = [float(x) for x in values]
    return {
        "mean": float(np.mean(v)) if v else None,
        "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
        "values": v,
    }


class AgeFoldTrainer(FoldTrainer):
    """The fold trainer with one output, standardised-age targets, an L1-type loss and MAE checkpoint choice.

    ``final=True`` trains on ``split.train`` (all data) with no validation or test part and keeps the last
    epoch; its files go to ``RUN_DIR/final``.
    """

    num_outputs = 1

    def __init__(self, *args: Any, ages: np.ndarray, loss: str = AgeConfig.loss, final: bool = False, **kw: Any):
        super().__init__(*args, **kw)
        self.ages = np.asarray(ages, dtype=np.float64)
        self.loss_name = loss
        self.final = final
        if final:
            self.fold_dir = self.run_dir / "final"
        train_ages = self.ages[self.split.train]
        self.mean = float(train_ages.mean())
        sd = float(train_ages.std())
        self.sd = sd if sd > 1e-6 else 1.0
        self.targets = ((self.ages - self.mean) / self.sd).astype(np.float32)

    def _inputs(self, bidx: np.ndarray, pos: np.ndarray, plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented (mixed) inputs as for the classifier; standardised ages mixed with the same lambda."""
        x, _ = super()._inputs(bidx, pos, plan)
        t = self.targets[bidx[pos]]
        if plan.mixing:
            t = plan.lam * t + (1.0 - plan.lam) * self.targets[bidx[plan.perm[pos]]]
        return x, torch.from_numpy(np.asarray(t, dtype=np.float32)).to(self.device).unsqueeze(1)

    def _per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Smooth L1 (beta 1 SD) or L1 between output and standardised age, per sample (B,)."""
        fn = F.smooth_l1_loss if self.loss_name == "smooth_l1" else F.l1_loss
        return fn(outputs.float()[:, :1], targets.float(), reduction="none")[:, 0]

    def predict_weeks(self, indices: np.ndarray) -> np.ndarray:
        """Predicted ages (weeks) of samples."""
        raw = self._predict(indices, per_sample=lambda y: y[:, 0]).astype(np.float64)  # standardised
        return raw * self.sd + self.mean

    def _evaluate(self, indices: np.ndarray, full: bool = False) -> tuple[np.ndarray, dict[str, Any], float]:
        """(predicted weeks, metrics, MAE in weeks); the MAE is the 'validation loss' that picks the epoch."""
        if len(indices) == 0:  # the final model has no validation part
            return np.zeros(0), {"auc": None, "accuracy": None, "balanced_accuracy": None}, 0.0
        pred = self.predict_weeks(indices)
        err = mae(self.ages[indices], pred)
        return pred, {"auc": None, "accuracy": None, "balanced_accuracy": None, "mae_weeks": err}, err

    def _report_epoch(self, r: dict[str, Any], tb) -> None:
        cfg, e = self.cfg, r["epoch"]
        fraction, eta = self._progress_at(e)
        val = None if self.final else r["val_loss"]
        self.reporter.emit(
            {
                "event": "epoch",
                "task": "age",
                "fold": self.fold,
                "final": self.final,
                "epoch": e,
                "epochs": cfg.epochs,
                "train_loss": r["train_loss"],
                "val_loss": val,
                "val_mae_weeks": val,
                "val_auc": None,
                "val_accuracy": None,
                "lr": r["lr"],
                "fraction": fraction,
                "eta_s": eta,
            }
        )
        what = "final model (all data)" if self.final else f"fold {self.fold}"
        log.info(
            "%s epoch %d/%d: train loss %.4f (%s, standardised age)%s, lr %.2e, %.1fs%s%s",
            what,
            e + 1,
            cfg.epochs,
            r["train_loss"],
            self.loss_name,
            "" if val is None else f", val MAE {val:.3f} weeks",
            r["lr"],
            r["train_s"] + r["eval_s"],
            " *" if self.best_epoch == e and not self.final else "",
            " early stop" if self.stopped_early else "",
        )
        self.reporter.postfix(
            f"{'final' if self.final else f'fold {self.fold}'} ep {e + 1} loss {r['train_loss']:.3f}"
            + ("" if val is None else f" MAE {val:.2f}w")
        )
        if tb is not None:
            tb.add_scalar("train_loss", r["train_loss"], e)
            if val is not None:
                tb.add_scalar("val_mae_weeks", val, e)
            tb.add_scalar("lr", r["lr"], e)
            tb.flush()

    def _finish(self) -> dict[str, Any]:
        """Test the selected checkpoint (and the last epoch); write predictions, weights and result.json."""
        test = self.split.test
        last_pred = self.predict_weeks(test) if len(test) else np.zeros(0)
        best = self.fold_dir / "best.pt"
        if best.is_file() and not self.final:
            self.model.load_state_dict(load_checkpoint(best)["model"])
        pred = self.predict_weeks(test) if len(test) else np.zeros(0)
        true = self.ages[test]
        rows = []
        for i, p in zip(test, pred):
            s = self.samples[int(i)]
            rows.append(
                [int(i), str(s.path), s.subject, s.session, self.fold, repr(float(self.ages[i])), repr(float(p))]
            )
        seen = np.concatenate([self.split.train, self.split.val])
        base = float(self.ages[seen].mean())
        result = {
            "task": "age",
            "fold": None if self.final else self.fold,
            "final": self.final,
            "best_epoch": self.history[-1]["epoch"] if self.final and self.history else self.best_epoch,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "selection": "last epoch" if self.final else "lowest validation MAE",
            "n_train": len(self.split.train),
            "n_val": len(self.split.val),
            "n_test": len(test),
            "target": {"unit": "weeks", "mean": self.mean, "sd": self.sd, "standardised": True},
            "loss": self.loss_name,
            "pretrained": self.pretrained_report,
            "val_mae_weeks": None if self.final or self.best_score is None else -float(self.best_score),
            "test": regression_metrics(true, pred) if len(test) else None,
            "test_last_epoch": regression_metrics(true, last_pred) if len(test) else None,
            "baseline": {
                "rule": "always predict the mean age of the fold's training data (train + validation)",
                "prediction_weeks": base,
                "mae_weeks": mae(true, np.full(len(test), base)) if len(test) else None,
            },
            "history_note": "train_loss: training loss on standardised ages; val_loss: validation MAE (weeks)",
            "history": self.history,
        }
        self._write_fold_files(None if self.final else PRED_COLUMNS, rows, result)
        if self.final:
            log.info("final model finished (%d epochs on %d volumes)", len(self.history), len(self.split.train))
            self.reporter.emit({"event": "fold_end", "task": "age", "fold": None, "final": True, "metrics": {}})
        else:
            m = result["test"]
            log.info(
                "fold %d finished: best epoch %d; test MAE %.3f weeks (last epoch %.3f; mean-age baseline %.3f)",
                self.fold,
                self.best_epoch + 1,
                m["mae_weeks"],
                result["test_last_epoch"]["mae_weeks"],
                result["baseline"]["mae_weeks"],
            )
            self.reporter.emit(
                {
                    "event": "fold_end",
                    "task": "age",
                    "fold": self.fold,
                    "metrics": {
                        "mae_weeks": m["mae_weeks"],
                        "baseline_mae_weeks": result["baseline"]["mae_weeks"],
                    },
                }
            )
        return result
