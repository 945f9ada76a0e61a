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


def resnet10(weights=None, **kwargs) -> torchvision.models.ResNet:
    """torchvision's ResNet with one basic block per stage instead of resnet18's two: about
    half the work a training step, for CPU-fast models (the demo). No ImageNet weights exist."""
    if weights is not None:
        raise ValueError("resnet10 has no published weights")
    return torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], **kwargs)


# name -> (builder, torchvision weights enum or None where no ImageNet weights exist)
CLASSIFIER_ARCHS = {
    "resnet10": (resnet10, None),
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights),
    "resnet152": (torchvision.models.resnet152, torchvision.models.ResNet152_Weights),
}
# class names in segmentation_models_pytorch, imported only when a segmenter is built:
# the classifier stages would otherwise pay for importing smp and timm in every process
SEGMENTER_ARCHS = {"unet": "Unet", "unetplusplus": "UnetPlusPlus", "fpn": "FPN"}
SEGMENTER_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")  # smp's ResNet encoders
IMAGENET = "imagenet"  # a `pretrained` value: the local torch hub cache's ImageNet weights


def _choose(kind: str, name: str, valid) -> None:
    if name not in valid:
        raise HbrError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


def _local_imagenet_weights(arch: str) -> tuple[Optional[dict], Path]:
    """ImageNet weights of a torchvision ResNet from the local torch hub cache (None when not
    there), and the cached file's path.

    Never downloads: this pipeline runs on machines without network access.
    """
    enum = CLASSIFIER_ARCHS[arch][1]
    if enum is None:
        raise HbrError(f"pretrained: no ImageNet weights exist for {arch}; give a weights file, or "
                       "pretrained: false")
    weights = enum.DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        print(
            f"pretrained: no local ImageNet weights for {arch} at {cached}; training from scratch",
            file=sys.stderr,
        )
        return None, cached
    return _read_weights_file(cached), cached


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict (tensor name -> tensor) from a file saved with torch.save, read safely
    (weights_only); an hbr checkpoint or a {"state_dict": ...} / {"model": ...} wrapper is
    unwrapped, and DataParallel's `module.` prefix dropped."""
    if not path.is_file():
        raise HbrError(f"{path}: pretrained weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - on foreign bytes torch.load raises IndexError, KeyError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HbrError(f"{path}: not a PyTorch weights file ({first[:120]})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not (isinstance(state, dict) and state
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise HbrError(f"{path}: not a state dict (names to tensors); save one with "
                       "torch.save(model.state_dict(), PATH)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def pretrained_source(pretrained: Any) -> Optional[str | Path]:
    """What a `pretrained` setting asks for: None (from scratch), IMAGENET, or a weights file."""
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        return IMAGENET
    text = str(pretrained).strip()
    if text.lower() in ("", "false"):
        return None
    if text.lower() in ("true", IMAGENET):
        return IMAGENET
    return Path(text).expanduser()


def _start_state(pretrained: Any, arch: str) -> tuple[Optional[dict], str]:
    """The state dict a new network starts from (None: from scratch) and where it came from."""
    source = pretrained_source(pretrained)
    if source is None:
        return None, ""
    if source == IMAGENET:
        state, cached = _local_imagenet_weights(arch)
        return state, str(cached)
    return _read_weights_file(source), str(source)


def _grey_stem(rgb_weight: torch.Tensor) -> torch.Tensor:
    """A 1-channel first convolution from RGB weights (sum over colours, as timm does)."""
    return rgb_weight.sum(dim=1, keepdim=True)


def _count(names: list[str]) -> str:
    """"N key(s)" for a message."""
    return f"{len(names)} key{'s' if len(names) != 1 else ''}"


def load_start_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str, expected: str) -> None:
    """Load a start state dict into a new network (a ResNet or a U-Net's ResNet encoder), adapted as users expect.

    The RGB first convolution becomes the 1-channel stem (colours summed); `fc.*` (a
    classification head) is dropped where the network has none or its size differs (another
    number of classes), so that layer keeps its fresh initialisation. Anything else that
    does not match (a key missing or unexpected, a shape that differs) is an HbrError naming
    `source` and the first such key: a resnet34 file for a resnet18 must not half-load.
    """
    target = module.state_dict()
    state = dict(state)
    stem = state.get("conv1.weight")
    if stem is not None and "conv1.weight" in target and stem.ndim == 4 and stem.shape[1] == 3 \
            and target["conv1.weight"].shape[1] == 1:
        state["conv1.weight"] = _grey_stem(stem)
    for name in [k for k in state if k.startswith("fc.")]:
        if name not in target or state[name].shape != target[name].shape:
            del state[name]
    # num_batches_tracked: batch-norm counters, absent from files saved by old torch versions
    missing = [k for k in target if k not in state and not k.startswith("fc.")
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    differ = [k for k in state if k in target and state[k].shape != target[k].shape]
    problems = []
    if missing:
        problems.append(f"{_count(missing)} missing, first: {missing[0]}")
    if unexpected:
        problems.append(f"{_count(unexpected)} unexpected, first: {unexpected[0]}")
    if differ:
        k = differ[0]
        problems.append(f"{_count(differ)} of another shape, first: {k} {tuple(state[k].shape)} instead of "
                        f"{tuple(target[k].shape)}")
    if problems:
        raise HbrError(f"{source}: {expected} expected; {'; '.join(problems)}")
    module.load_state_dict({**target, **state})
    print(f"pretrained: {expected} loaded from {source}")


def _build_classifier(arch: str, num_outputs: int, pretrained: Any) -> nn.Module:
    _choose("classifier architecture", arch, CLASSIFIER_ARCHS)
    model = CLASSIFIER_ARCHS[arch][0](weights=None)
    old = model.conv1
    model.conv1 = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    model.fc = nn.Linear(model.fc.in_features, num_outputs)
    state, source = _start_state(pretrained, arch)
    if state is not None:
        load_start_weights(model, state, source, f"{arch} weights")
    return model


def decoder_sizes(arch: str, channels: int) -> dict[str, Any]:
    """smp keyword arguments of a decoder whose widest block has `channels` channels: the U-Nets'
    five blocks halve from there (at least 16 each; 256 gives smp's default 256, 128, 64, 32, 16),
    FPN's pyramid has `channels` and its segmentation blocks half that."""
    if arch == "fpn":
        return {"decoder_pyramid_channels": channels, "decoder_segmentation_channels": max(channels // 2, 16)}
    return {"decoder_channels": tuple(max(channels >> i, 16) for i in range(5))}


def _build_segmenter(arch: str, encoder: str, classes: int, pretrained: Any, decoder_channels: int = 256) -> nn.Module:
    _choose("segmenter architecture", arch, SEGMENTER_ARCHS)
    _choose("segmenter encoder", encoder, SEGMENTER_ENCODERS)
    import segmentation_models_pytorch as smp

    network = getattr(smp, SEGMENTER_ARCHS[arch])
    model = network(encoder_name=encoder, encoder_weights=None, in_channels=1, classes=classes,
                    **decoder_sizes(arch, decoder_channels))
    state, source = _start_state(pretrained, encoder)
    if state is not None:
        if any(k.startswith("encoder.") for k in state):  # a whole U-Net's weights (e.g. an hbr model): its encoder
            state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        load_start_weights(model.encoder, state, source, f"{encoder} encoder weights")
    return model


def create_model(spec: dict[str, Any], pretrained: Any = False) -> nn.Module:
    """Build a network from its spec, from scratch or from the weights `pretrained` names:
    True or "imagenet" (the local torch hub cache's ImageNet weights) or a state-dict file
    (see load_start_weights). Nothing is ever downloaded.

    Classifier: {"kind": "classifier", "arch": "resnet18", "num_outputs": 2}.
    Segmenter: {"kind": "segmenter", "arch": "unet", "encoder": "resnet18", "classes": 7,
    "decoder_channels": 256} (decoder_channels may be absent: 256, as models saved before it had).
    """
    kind = spec.get("kind")
    if kind == "classifier":
        return _build_classifier(spec["arch"], int(spec["num_outputs"]), pretrained)
    if kind == "segmenter":
        return _build_segmenter(spec["arch"], spec["encoder"], int(spec["classes"]), pretrained,
                                int(spec.get("decoder_channels", 256)))
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
