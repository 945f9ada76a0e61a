"""The one training loop, shared by the classifiers and the segmenter.

A task-specific `Objective` supplies the loss and the validation metrics; the loop
does the rest: seeded shuffling, mixed precision, one-cycle learning rate, per-epoch
log lines, best-epoch selection and an optional time limit. Within an epoch it logs a
progress line every HBR_PROGRESS_SECONDS (hbr.progress), and each line says how long the
whole training has left; a warning raised while training (e.g. scikit-learn's on a small
validation set) is logged once per training instead of once per epoch.
"""

from __future__ import annotations

import copy
import math
import random
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from hbr.config import RuntimeConfig, TrainConfig
from hbr.devices import autocast, batch_to_device, grad_scaler, to_device
from hbr.prediction import make_loader, predict_batches
from hbr.progress import Meter, format_duration


class Objective(Protocol):
    """What the loop needs to know about a task."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch (model outputs are raw logits)."""

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Validation metrics from all validation logits and targets; must include 'score' (higher is better)."""


@dataclass
class TrainResult:
    """Best weights, the metrics of their epoch, and the per-epoch history."""

    state_dict: dict
    metrics: dict
    history: list


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) for reproducible training."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_indices(
    n: int, val_fraction: float, seed: int, stratify: Optional[Sequence[int]] = None
) -> tuple[list[int], list[int]]:
    """Seeded train/validation split of range(n), stratified by `stratify` when given."""
    from sklearn.model_selection import train_test_split  # here: importing sklearn costs every stage ~1 s

    indices = list(range(n))
    n_val = int(round(n * val_fraction))
    if n_val == 0:
        return indices, []
    if stratify is not None:
        counts = np.bincount(np.asarray(stratify, int))
        if counts[counts > 0].min() < 2 or n_val < len(counts[counts > 0]):
            stratify = None  # too few of a class to stratify; a plain split still works
    train, val = train_test_split(indices, test_size=n_val, random_state=seed, stratify=stratify)
    return sorted(train), sorted(val)


def _collect(model, dataset, batch_size, workers, device, runtime) -> tuple[torch.Tensor, torch.Tensor]:
    outputs, targets = [], []
    for out, (target,) in predict_batches(model, dataset, batch_size, workers, device, runtime):
        outputs.append(out)
        targets.append(target)
    return torch.cat(outputs), torch.cat(targets)


def epoch_rank(record: dict) -> tuple[float, float]:
    """Order of epochs: higher score first; on a tie (small validation sets saturate at a
    perfect score within an epoch or two) the lower validation loss, so a barely trained
    early epoch does not win."""
    return record.get("score", 0.0), -record.get("val_loss", 0.0)


def _format(metrics: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def balanced_sampler(labels: Sequence[int], generator: torch.Generator) -> WeightedRandomSampler:
    """An epoch of len(labels) draws, with replacement, in which every class is equally likely:
    with a few positives among hundreds of images, each batch still holds some."""
    labels = np.asarray(labels, int)
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels), replacement=True,
                                 generator=generator)


def train(
    model: torch.nn.Module,
    train_set: Dataset,
    val_set: Optional[Dataset],
    objective: Objective,
    cfg: TrainConfig,
    device: torch.device,
    runtime: RuntimeConfig,
    log: Callable[[str], None] = print,
    balance: Optional[Sequence[int]] = None,
    log_progress: Optional[Callable[[str], None]] = None,
) -> TrainResult:
    """Train `model` and return the weights of its best validation epoch (the last without validation).

    With `balance` (the training labels) every epoch samples the classes equally often.
    Progress lines within an epoch go to `log_progress` (default: `log`).
    """
    log_progress = log if log_progress is None else log_progress
    # the warning filters stay as they are; what they let through is recorded and logged once
    # each (other code's catch_warnings resets the once-per-place registry every epoch)
    with warnings.catch_warnings(record=True) as caught:
        shown: set[tuple] = set()

        def log_warnings() -> None:
            for w in caught:
                key = (w.category, str(w.message))
                if key not in shown:
                    shown.add(key)
                    log(f"warning ({w.category.__name__}, shown once per training): {w.message}")
            caught.clear()

        return _train(model, train_set, val_set, objective, cfg, device, runtime, log, balance, log_progress,
                      log_warnings)


def _train(model, train_set, val_set, objective, cfg, device, runtime, log, balance, log_progress,
           log_warnings) -> TrainResult:
    """The loop of `train`; `log_warnings()` logs the warnings caught so far (once each)."""
    model = to_device(model, device, runtime)
    batch_size = min(cfg.batch_size, len(train_set))
    steps = max(len(train_set) // batch_size, 1)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps))  # a few dozen images still get trained
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg.lr, total_steps=epochs * steps)
    scaler = grad_scaler(device)
    best: Optional[TrainResult] = None
    history = []
    start, step, total_steps = time.monotonic(), 0, epochs * steps
    limit_s = 60 * cfg.time_limit_min
    meter = Meter(total_steps)  # its rate includes validation time, so the ETA does too

    def progress() -> float:
        p = step / total_steps
        return max(p, (time.monotonic() - start) / limit_s) if limit_s > 0 else p

    def eta() -> str:
        left = meter.eta_s()
        if limit_s > 0:
            clock_left = max(0.0, limit_s - (time.monotonic() - start))
            left = clock_left if left is None else min(left, clock_left)
        return "" if left is None else f"training ETA {format_duration(left)}"

    for epoch in range(epochs):
        epoch_start = time.monotonic()
        model.train()
        train_set.set_epoch(epoch)
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = {"shuffle": True, "generator": generator} if balance is None else \
            {"sampler": balanced_sampler(balance, generator)}
        loader = make_loader(
            train_set,
            batch_size,
            cfg.workers,
            device,
            drop_last=True,  # BatchNorm cannot train on a batch of one
            **order,
        )
        losses = []
        for batch_index, (x, target) in enumerate(loader, start=1):
            if progress() >= 1.0:
                break
            with autocast(device, runtime):
                out = model(batch_to_device(x, device, runtime))
            loss = objective.loss(out.float(), target.to(device))
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            step += 1
            # under a time limit the schedule is fast-forwarded to the clock, so a run cut
            # short still ends at a low learning rate instead of mid-warm-up
            catch_up = min(total_steps, max(step, math.floor(progress() * total_steps)))
            while schedule.last_epoch < catch_up:
                schedule.step()
            losses.append(loss.item())
            meter.update()
            if meter.due():
                log_progress(f"epoch {epoch + 1}/{epochs}: step {batch_index}/{steps}, loss {np.mean(losses):.4f}, "
                             f"{meter.rate():.3g} steps/s; {eta()}")
        if not losses:  # the clock ran out between two epochs
            if epoch and progress() >= 1.0:
                log(f"time limit of {cfg.time_limit_min} min reached after epoch {epoch}")
            break
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if val_set is not None and len(val_set):
            outputs, targets = _collect(model, val_set, batch_size, cfg.workers, device, runtime)
            record["val_loss"] = float(objective.loss(outputs, targets))
            record.update(objective.metrics(outputs, targets))
        record["seconds"] = round(time.monotonic() - epoch_start, 2)
        history.append(record)
        log_warnings()
        left = f" ({eta()})" if epoch + 1 < epochs and eta() else ""
        log(f"epoch {epoch + 1}/{epochs} {_format(record)}{left}")
        if best is None or "score" not in record or epoch_rank(record) > epoch_rank(best.metrics):
            best = TrainResult(copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()}), record, history)
        if progress() >= 1.0 and epoch + 1 < epochs:
            log(f"time limit of {cfg.time_limit_min} min reached after epoch {epoch + 1}")
            break
    log_warnings()
    best.history = history
    log(f"best epoch {best.metrics['epoch']}: {_format(best.metrics)}")
    return best
