"""Configuration: YAML -> frozen dataclasses, with `key.sub=value` overrides.

Unknown keys are rejected with the list of valid ones, so a typo never silently
falls back to a default. The resolved config is written into the work directory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from hbr.errors import HbrError


class ConfigError(HbrError):
    """A config file or override that cannot be used; the message says why."""


@dataclass(frozen=True)
class DicomConfig:
    protocol: str = "Total Body"  # ProtocolName (0018,1030) of the images to decode
    max_member_mb: float = 64.0  # a zip member inflating beyond this is refused (zip bomb)
    workers: int = 2  # processes reading zips in parallel (0 = in this process)


@dataclass(frozen=True)
class CanvasConfig:
    height: int = 960  # every image is centre padded/cropped to this canvas (upstream)
    width: int = 384


@dataclass(frozen=True)
class BackgroundConfig:
    black: int = 0  # mode of the top-left block for a black background
    white: int = 252
    corner: int = 9  # side of the top-left block, pixels


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 5.0
    scale: float = 0.05  # +/- relative zoom
    shift: float = 0.03  # +/- fraction of the input size
    gamma: float = 0.15  # +/- log-uniform gamma jitter
    brightness: float = 0.05  # +/- additive, fraction of full range
    noise: float = 0.02  # Gaussian noise sigma, fraction of full range
    hflip: float = 0.0  # probability of a horizontal flip (left/right landmarks are swapped)
    invert: float = 0.0  # probability of showing an image in the other background's polarity (stages 2, 3)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    min_steps: int = 0  # small label sets: raise the epochs until at least this many optimiser steps
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 2  # DataLoader workers
    time_limit_min: float = 0.0  # stop after this many minutes (0 = no limit); best epoch kept
    min_images: int = 10  # refuse to train on fewer labelled images


@dataclass(frozen=True)
class ClassifierConfig:
    arch: str = "resnet152"
    input_height: int = 960
    input_width: int = 384
    pretrained: bool = False
    threshold: float = 0.5  # probability of label 1 above which an image is label 1
    # per-background stages also learn from the other background's labels, with those
    # images' polarity swapped (black + white - value): white-background scans are few
    share_backgrounds: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)
    # every QC question (bone image, framing, contrast, head pose) has the same answer in a
    # mirror image and on the other background (white-background scans are inverted renderings)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(hflip=0.5, invert=0.5))


@dataclass(frozen=True)
class SegmenterConfig:
    arch: str = "unet"
    encoder: str = "resnet152"
    input_height: int = 960
    input_width: int = 384
    pretrained: bool = False
    point_radius: float = 24.0  # disc radius of point targets, input pixels (~8 at 320x128)
    point_weight: float = 10.0  # BCE weight of point channels
    point_bias: float = -2.2  # initial output bias of point channels
    threshold: float = 0.5  # mask probability threshold in stage 8
    mask_floor: float = 0.01  # probabilities under this are saved as 0 in the PNG masks
    save_npy: bool = False  # also save float masks as .npy
    # the black and white U-Nets also learn from each other's LabelMe files, those images'
    # polarity swapped (as classifier.share_backgrounds): white-background scans are few
    share_backgrounds: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100, batch_size=4))
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(hflip=0.5))


@dataclass(frozen=True)
class PredictConfig:
    batch_size: int = 16  # classifier batches
    segmenter_batch_size: int = 16  # U-Net batches (stage 7): on a CPU each of the two lanes holds one batch's activations
    workers: int = 2  # DataLoader workers
    chunk_size: int = 1024  # images per resumable chunk: a re-run after a kill redoes at most one chunk


# CPU flags (Linux /proc/cpuinfo names) of native bfloat16 arithmetic. Without them oneDNN
# emulates bfloat16: on an AVX2-only CPU a batch of the demo U-Net took 3.6 s against 0.70 s in
# float32, a training step about 11x longer; with AMX, bfloat16 was about 2x faster than float32.
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def has_native_bf16(cpu_flags: Iterable[str]) -> bool:
    """True when a CPU with these flags computes bfloat16 natively."""
    return not NATIVE_BF16_FLAGS.isdisjoint(cpu_flags)


@functools.lru_cache(maxsize=1)
def this_cpu_has_native_bf16() -> bool:
    """`has_native_bf16` for this machine's CPU (False where /proc/cpuinfo does not say)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags")), [])
    return has_native_bf16(flags)


@dataclass(frozen=True)
class RuntimeConfig:
    # bfloat16 autocast + channels_last on CPU; "auto" (the default) = on where the CPU has native bfloat16
    cpu_bf16: bool = field(default_factory=this_cpu_has_native_bf16)
    threads: int = 0  # torch intra-op threads (0 = torch default)


@dataclass(frozen=True)
class Config:
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    dicom: DicomConfig = field(default_factory=DicomConfig)
    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def valid_keys(cls=Config, prefix: str = "") -> list[str]:
    """All dotted keys a config accepts, e.g. 'classifier.train.epochs'."""
    keys = []
    for name, typ in _field_types(cls).items():
        if dataclasses.is_dataclass(typ):
            keys += valid_keys(typ, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise ConfigError."""
    try:
        if typ is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("true", "yes", "1", "on"):
                    return True
                if lowered in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError(value)
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        or_auto = " (or auto)" if key in AUTO_KEYS else ""
        raise ConfigError(f"{key}: {value!r} is not a valid {typ.__name__}{or_auto}") from None
    raise ConfigError(f"{key}: unsupported type {typ}")


# keys that also take "auto": the built-in default, which depends on the machine
AUTO_KEYS = frozenset({"runtime.cpu_bf16"})


def _build(cls, data: Any, prefix: str = ""):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys: {', '.join(valid_keys(cls, prefix))}"
        )
    defaults = cls()
    kwargs = {}
    for name, typ in types.items():
        if name not in data:
            continue
        key = prefix + name
        if dataclasses.is_dataclass(typ):
            # merge onto the default of this section (which may differ from typ())
            base = dataclasses.asdict(getattr(defaults, name))
            kwargs[name] = _build(typ, _deep_merge(base, data[name] or {}, key), key + ".")
        elif key in AUTO_KEYS and str(data[name]).strip().lower() == "auto":
            kwargs[name] = getattr(defaults, name)
        else:
            kwargs[name] = _coerce(data[name], typ, key)
    return dataclasses.replace(defaults, **kwargs)


def _deep_merge(base: dict, update: Any, key: str) -> dict:
    if not isinstance(update, dict):
        raise ConfigError(f"{key}: expected a mapping, got {update!r}")
    merged = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _deep_merge(merged[k], v, f"{key}.{k}")
        else:
            merged[k] = v
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a', 'b'], value parsed as YAML scalar)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (None = built-in defaults) and apply `key.sub=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = {}
                node[k] = child
            node = child
        node[keys[-1]] = value
    try:
        return check_values(_build(Config, data))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


# The networks shrink their input 32-fold. On CPUs with AMX, bfloat16 training of a ResNet
# whose deepest feature map is 1 pixel wide or high (e.g. a 64x32 input) gave different
# weights on every run and sometimes NaN (torch 2.14.1, oneDNN 3.12); 2x2 and larger did not.
MIN_BF16_INPUT_SIDE = 64


def check_values(cfg: Config) -> Config:
    """Refuse values that parse but cannot work; returns `cfg`."""
    for key in ("batch_size", "segmenter_batch_size", "chunk_size"):
        if getattr(cfg.predict, key) < 1:
            raise ConfigError(f"predict.{key} = {getattr(cfg.predict, key)}: must be at least 1")
    s = cfg.segmenter
    if not 0.0 <= s.mask_floor <= s.threshold:
        raise ConfigError(f"segmenter.mask_floor = {s.mask_floor}: must be between 0 and segmenter.threshold "
                          f"({s.threshold}), or stage 8 would miss mask pixels")
    if cfg.runtime.cpu_bf16:
        for section in ("classifier", "segmenter"):
            for side in ("input_height", "input_width"):
                value = getattr(getattr(cfg, section), side)
                if value < MIN_BF16_INPUT_SIDE:
                    raise ConfigError(
                        f"{section}.{side} = {value}: with runtime.cpu_bf16 each input side must be at least "
                        f"{MIN_BF16_INPUT_SIDE} (smaller inputs train nondeterministically on some CPUs); "
                        "use a larger input or runtime.cpu_bf16=false"
                    )
    return cfg


def config_to_dict(cfg) -> dict:
    """Plain nested dict of a config (or one of its sections)."""
    return dataclasses.asdict(cfg)


def config_hash(*parts: Any) -> str:
    """Short stable hash of config sections and other JSON-able values (e.g. label digests)."""
    blob = json.dumps(
        [config_to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
