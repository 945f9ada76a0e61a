"""The model registry and self-describing checkpoints.

`create_model(spec)` builds any network of the project from a small dict of names
and sizes; the same dict is stored in every checkpoint (with the preprocessing and
the meaning of the outputs), so `load_checkpoint` rebuilds exactly what was trained.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

from hbr.errors import HbrError
from hbr.files import atomic_path

# the format this hbr writes; models of earlier formats still load for prediction (format 1
# differs only in how the retrain key of its config_hash was computed)
CHECKPOINT_FORMAT = "hbr-checkpoint-2"
READABLE_FORMATS = ("hbr-checkpoint-1", CHECKPOINT_FORMAT)

CLASSIFIER_ARCHS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights),
    "resnet152": (torchvision.models.resnet152, torchvision.models.ResNet152_Weights),
}
# class names in segmentation_models_pytorch, imported only when a segmenter is built:
# the classifier stages would otherwise pay for importing smp and timm in every process
SEGMENTER_ARCHS = {"unet": "Unet", "unetplusplus": "UnetPlusPlus", "fpn": "FPN"}
SEGMENTER_ENCODERS = tuple(CLASSIFIER_ARCHS)


def _choose(kind: str, name: str, valid) -> None:
    if name not in valid:
        raise HbrError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


def _local_imagenet_weights(arch: str) -> Optional[dict]:
    """ImageNet weights of a torchvision ResNet from the local torch hub cache, or None.

    Never downloads: this pipeline runs on machines without network access.
    """
    weights = CLASSIFIER_ARCHS[arch][1].DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        print(
            f"pretrained: no local ImageNet weights for {arch} at {cached}; training from scratch",
            file=sys.stderr,
        )
        return None
    return torch.load(cached, map_location="cpu", weights_only=True)


def _grey_stem(rgb_weight: torch.Tensor) -> torch.Tensor:
    """A 1-channel first convolution from RGB weights (sum over colours, as timm does)."""
    return rgb_weight.sum(dim=1, keepdim=True)


def _build_classifier(arch: str, num_outputs: int, pretrained: bool) -> nn.Module:
    _choose("classifier architecture", arch, CLASSIFIER_ARCHS)
    model = CLASSIFIER_ARCHS[arch][0](weights=None)
    state = _local_imagenet_weights(arch) if pretrained else None
    if state is not None:
        model.load_state_dict(state)
    old = model.conv1
    model.conv1 = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    if state is not None:
        model.conv1.weight.data.copy_(_grey_stem(old.weight.data))
    model.fc = nn.Linear(model.fc.in_features, num_outputs)
    return model


def _build_segmenter(arch: str, encoder: str, classes: int, pretrained: bool) -> nn.Module:
    _choose("segmenter architecture", arch, SEGMENTER_ARCHS)
    _choose("segmenter encoder", encoder, SEGMENTER_ENCODERS)
    import segmentation_models_pytorch as smp

    network = getattr(smp, SEGMENTER_ARCHS[arch])
    model = network(encoder_name=encoder, encoder_weights=None, in_channels=1, classes=classes)
    state = _local_imagenet_weights(encoder) if pretrained else None
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        state["conv1.weight"] = _grey_stem(state["conv1.weight"])
        model.encoder.load_state_dict(state)
    return model


def create_model(spec: dict[str, Any], pretrained: bool = False) -> nn.Module:
    """Build a network from its spec.

    Classifier: {"kind": "classifier", "arch": "resnet18", "num_outputs": 2}.
    Segmenter: {"kind": "segmenter", "arch": "unet", "encoder": "resnet18", "classes": 7}.
    """
    kind = spec.get("kind")
    if kind == "classifier":
        return _build_classifier(spec["arch"], int(spec["num_outputs"]), pretrained)
    if kind == "segmenter":
        return _build_segmenter(spec["arch"], spec["encoder"], int(spec["classes"]), pretrained)
    raise HbrError(f"unknown model kind {kind!r}; valid: classifier, segmenter")


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Atomically save weights with everything needed to rebuild and use the model.

    `meta` holds "spec" (for create_model), "preprocess", "task" (label meaning or
    landmarks), "metrics" and "config_hash"; all plain values, so the file loads
    with weights_only=True.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    plain_meta = json.loads(json.dumps(meta, default=float))  # numpy scalars -> float, for weights_only
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **plain_meta, "state_dict": state}, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (weights_only=True); refuse anything else with a message."""
    path = Path(path)
    if not path.is_file():
        raise HbrError(f"{path}: no model file here")
    try:
        # mmap: the weights are mapped, not copied (a resnet18 checkpoint read in 0.01-0.02 s instead of 0.04-0.06 s)
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - on foreign bytes torch.load raises IndexError, KeyError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HbrError(f"{path}: not an hbr checkpoint ({first[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS:
        found = ckpt.get("format") if isinstance(ckpt, dict) else None
        if isinstance(found, str) and found.startswith("hbr-checkpoint-"):
            raise HbrError(f"{path}: saved by a newer hbr ({found}); update hbr, or retrain it with --mode train")
        raise HbrError(f"{path}: not an hbr checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return ckpt


def load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network a checkpoint describes and load its weights (eval mode)."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, path), checkpoint_meta(ckpt)


def checkpoint_meta(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Everything a read checkpoint holds but the weights."""
    return {k: v for k, v in ckpt.items() if k != "state_dict"}


# torch.nn.init's initialisers and the tensor fills they end in
_INITIALISERS = frozenset({n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")}
                          | {"normal_", "uniform_", "fill_", "zero_"})


class _InitialisersSkipped(TorchFunctionMode):
    """Initialisers do nothing (in this thread, as every torch function mode): for a network
    whose weights are loaded next. On meta tensors each still ran a Python decomposition,
    0.02-0.03 s a network."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in _INITIALISERS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def model_from_checkpoint(ckpt: dict[str, Any], path: Path) -> nn.Module:
    """The network of a read checkpoint (see read_checkpoint) with its weights, in eval mode."""
    # meta tensors, not initialised: nothing is allocated or drawn that the file's weights
    # replace next (random initialisation took ~0.25 s a stage for resnet18)
    with torch.device("meta"), _InitialisersSkipped():
        model = create_model(ckpt["spec"])
    try:
        model.load_state_dict(ckpt["state_dict"], assign=True)
    except RuntimeError as exc:
        raise HbrError(f"{path}: weights do not fit the stored architecture ({str(exc)[:120]})") from None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise HbrError(f"{path}: the file lacks some of the architecture's weights")
    return model.eval()
