"""The one batched prediction loop, shared by every model stage and by validation.

On a GPU, or with loader workers, batches come from a DataLoader. On a CPU without
workers the batches run in two *lanes*: threads that each read, prepare and predict
whole batches. Preparing an image (read, pad, resize) is single-threaded NumPy and
OpenCV work; in one loop it leaves the other cores idle between forward passes, in two
lanes it overlaps the other lane's forward pass. On 2 cores, 1,000 images of stage 2 took
3.1-3.6 s in lanes against 4.5-5.1 s in one loop, and 2.8-4.0 s for the forward passes
alone. Each lane's forward pass uses the configured torch threads (giving each lane a
share instead was no faster). A batch's CPU work after the model (`finish`, e.g. writing
masks) runs in its lane too, so no further threads compete for the cores.
"""

from __future__ import annotations

from concurrent.futures import Future
from functools import partial
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from hbr.config import RuntimeConfig
from hbr.devices import autocast, batch_to_device
from hbr.memory import PeriodicRelease
from hbr.parallel import in_order

CPU_LANES = 2  # each lane holds one batch in memory
FINISH_THREADS = 2  # `finish` threads beside a GPU or loader workers
# CPU batches between returns of freed memory to the system (hbr.memory). Stage 7 black on
# 3,168 images peaked at 1150-1296 MB without (9 runs; ~1090 MB on 323 images); every 64
# batches: 1133-1148 MB at the same speed; every 16: 1100-1146 MB, ~5 % slower; after every
# batch: 1087 MB, 15-25 % slower.
TRIM_EVERY = 64


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


def _forward(model, batch: Sequence, device, runtime, postprocess, batch_size: int) -> tuple[torch.Tensor, list]:
    """One collated batch through the model (waited for if still a Future), padded to
    `batch_size` images: (contiguous float32 outputs on the CPU, the other fields)."""
    if isinstance(model, Future):
        model = model.result()
    x, rest = batch[0], list(batch[1:])
    n = len(x)
    if n < batch_size:
        # The kernels (oneDNN, cuDNN) are chosen by the batch's size, and their sums run in
        # another order for another size: padded, an image's output does not depend on how
        # many images share its batch, so a sharded run predicts the same bits as one run.
        x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
    # inference mode and autocast are per thread, so each lane enters them itself
    with torch.inference_mode():
        with autocast(device, runtime):
            out = model(batch_to_device(x, device, runtime))[:n]
        out = out.float()
        if postprocess is not None:
            out = postprocess(out)
        # channels_last outputs (segmenter maps) become plain (N, C, H, W) arrays: the
        # consumers read one channel at a time
        return out.cpu().contiguous(), rest


def predict_batches(
    model: Union[torch.nn.Module, Future],
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    runtime: RuntimeConfig,
    postprocess: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    finish: Optional[Callable[[torch.Tensor, list], Any]] = None,
) -> Iterator[Any]:
    """For every batch, in order, yield finish(outputs, other fields), or (outputs, other
    fields) without `finish`; outputs are contiguous float32 tensors on the CPU.

    `model` may be a Future of a model in eval mode that is still being built
    (hbr.stages.model_stage): the first batches are read and prepared meanwhile.
    The dataset yields tuples whose first item is the input tensor. `postprocess`
    (e.g. softmax) runs on the device before the copy back, so less data moves.
    `finish` is the batch's CPU work after the model (e.g. writing masks): it runs in
    the batch's lane on a CPU, and in threads beside the next forward pass otherwise.
    With `workers` = 0 on a CPU the batches run in lanes (see the module docstring);
    the outputs are the same, bit for bit, and in the same order either way. A short batch
    (the last one) is padded to `batch_size`: an image's outputs are the same bits whichever
    images share its batch.
    """
    if not isinstance(model, Future):
        model.eval()
    done = finish or (lambda out, rest: (out, rest))
    if device.type == "cpu" and workers == 0:
        release = PeriodicRelease(TRIM_EVERY)

        def lane(start: int):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            result = done(*_forward(model, default_collate(items), device, runtime, postprocess, batch_size))
            release()
            return result

        starts = range(0, len(dataset), batch_size)
        yield from in_order((partial(lane, start) for start in starts), CPU_LANES, "hbr-lane")
        return
    batches = iter(make_loader(dataset, batch_size, workers, device, shuffle=False))  # workers start now
    predicted = (_forward(model, batch, device, runtime, postprocess, batch_size) for batch in batches)
    if finish is None:
        yield from predicted
    else:
        yield from in_order((partial(finish, *result) for result in predicted), FINISH_THREADS, "hbr-finish")
