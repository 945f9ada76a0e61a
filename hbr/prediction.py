"""The one batched prediction loop, shared by every model stage and by validation."""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from hbr.config import RuntimeConfig
from hbr.devices import autocast, batch_to_device


def make_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device, **kwargs) -> DataLoader:
    """DataLoader with worker processes and pinned memory on CUDA."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        **kwargs,
    )


@torch.inference_mode()
def predict_batches(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    runtime: RuntimeConfig,
    postprocess: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Iterator[tuple[torch.Tensor, list]]:
    """Yield (outputs on the CPU as float32, the batch's other fields) for every batch, in order.

    The dataset yields tuples whose first item is the input tensor. `postprocess`
    (e.g. softmax) runs on the device before the copy back, so less data moves.
    """
    model.eval()
    for batch in make_loader(dataset, batch_size, workers, device, shuffle=False):
        x, rest = batch[0], list(batch[1:])
        with autocast(device, runtime):
            out = model(batch_to_device(x, device, runtime))
        out = out.float()
        if postprocess is not None:
            out = postprocess(out)
        yield out.cpu(), rest
