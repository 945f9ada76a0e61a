"""Configuration: YAML -> frozen dataclasses, with `key.sub=value` overrides.

Unknown keys are rejected with the nearest valid ones ("did you mean ...?"), so a typo
never silently falls back to a default; values out of range are refused; an error names
the `--set` it came from, or else the config file. The resolved config is written into
the work directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import copy
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import yaml

from hbr.errors import HbrError


class ConfigError(HbrError):
    """A config file or override that cannot be used; the message says why, and `key` (when
    known) is the dotted key at fault, so the error can be blamed on the --set that gave it."""

    def __init__(self, message: str, key: Optional[str] = None):
        super().__init__(message)
        self.key = key


PREDICT_ONLY = "predict_only"
MACHINE = "machine"
MEANING = "meaning"


def key(default: Any, meaning: str, predict: bool = False, machine: bool = False) -> Any:
    """A config key: its default and a one-line meaning (written into configs/default.yaml).

    `predict=True` marks a key that changes what a trained model's outputs become, not the
    model: a change to it never makes a stage retrain (see training_values).
    `machine=True` marks a key that says how the work is spread over this machine (workers,
    batch sizes, threads, precision), not what the results are: shards of one run may differ
    in it (see result_values).
    """
    return field(default=default, metadata={MEANING: meaning, PREDICT_ONLY: predict, MACHINE: machine})


# The type of a `pretrained` key: False (from scratch), True (ImageNet weights from the local
# torch hub cache) or the path of a weights file the user has; hbr.models reads it.
Weights = typing.Union[bool, str]
WEIGHTS_WORDS = {"true": True, "yes": True, "on": True, "1": True, "imagenet": True,
                 "false": False, "no": False, "off": False, "0": False}


def _weights_value(value: Any, key: str) -> bool | str:
    """A `pretrained` value: True/False (YAML booleans, their words, `imagenet` = True) or a file path.

    A bare word is not taken for a file name (`auto` is more likely a mistake than a file):
    a path has a folder part or a suffix, e.g. ./weights or resnet18.pt.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip() if isinstance(value, str) else ""
    if text.lower() in WEIGHTS_WORDS:
        return WEIGHTS_WORDS[text.lower()]
    if text and ("/" in text or "\\" in text or "." in text or text.startswith("~")):
        return text
    raise ConfigError(f"{key}: {value!r} is not true, false, imagenet or a weights file path "
                      "(a file path has a folder or a suffix, e.g. ./weights or resnet18.pt)", key)


def section(factory: Callable[[], Any], meaning: str = "") -> Any:
    """A nested config section built by `factory` (its defaults may differ per parent section)."""
    return field(default_factory=factory, metadata={MEANING: meaning})


def training_values(section: Any) -> dict:
    """The keys of a config section that shape training, as a plain dict: every key except
    those marked predict=True, so a new key counts for retraining unless it is marked."""
    values = {}
    for f in dataclasses.fields(section):
        if f.metadata.get(PREDICT_ONLY):
            continue
        value = getattr(section, f.name)
        values[f.name] = training_values(value) if dataclasses.is_dataclass(value) else value
    return values


def result_values(section: Any, prefix: str = "") -> dict[str, Any]:
    """The keys of a config (section) that decide the results, flat by dotted name: every key
    except those marked machine=True, so a new key counts unless it is marked."""
    values = {}
    for f in dataclasses.fields(section):
        if f.metadata.get(MACHINE):
            continue
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            values.update(result_values(value, f"{prefix}{f.name}."))
        else:
            values[f"{prefix}{f.name}"] = value
    return values


@dataclass(frozen=True)
class DicomConfig:
    protocol: str = key("Total Body", "ProtocolName (0018,1030) of the images to decode")
    max_member_mb: float = key(64.0, "a zip member inflating beyond this many MB is refused (zip bomb)")
    workers: int = key(2, "processes reading zips in parallel (0 = in the stage's own process)", machine=True)


@dataclass(frozen=True)
class CanvasConfig:
    height: int = key(960, "every image is centre padded (corner value) or cropped to this canvas, as upstream")
    width: int = key(384, "canvas width, pixels")


@dataclass(frozen=True)
class BackgroundConfig:
    black: int = key(0, "mode of the top-left block of a black-background image")
    white: int = key(252, "mode of the top-left block of a white-background image")
    corner: int = key(9, "side of the top-left block, pixels")


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = key(5.0, "+/- random rotation, degrees")
    scale: float = key(0.05, "+/- relative zoom")
    shift: float = key(0.03, "+/- shift, fraction of the input size")
    gamma: float = key(0.15, "+/- log-uniform gamma jitter")
    brightness: float = key(0.05, "+/- additive brightness, fraction of full range")
    noise: float = key(0.02, "Gaussian noise sigma, fraction of full range")
    hflip: float = key(0.0, "probability of a horizontal flip (left/right landmarks are swapped)")
    invert: float = key(0.0, "probability of showing an image in the other background's polarity (stages 2, 3)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = key(30, "training epochs")
    min_steps: int = key(0, "small label sets: raise the epochs until at least this many optimiser steps")
    batch_size: int = key(8, "training batch size")
    lr: float = key(1e-3, "AdamW learning rate")
    weight_decay: float = key(1e-4, "AdamW weight decay")
    val_fraction: float = key(0.2, "share of the labelled images held out for validation (the U-Net; the "
                                   "classifiers score out of fold instead, see classifier.folds)")
    seed: int = key(0, "seed of the split, the initial weights and the augmentation")
    workers: int = key(2, "DataLoader worker processes", machine=True)
    time_limit_min: float = key(0.0, "stop after this many minutes (0 = no limit); the best epoch is kept")
    min_images: int = key(10, "refuse to train on fewer labelled images")


AUTO = "auto"


@dataclass(frozen=True)
class QcStageConfig:
    region: str = key("whole", "what the model sees: whole (the image), bands (top and bottom 15 % of the scan) "
                               "or head (top quarter)")
    threshold: str = key(AUTO, "probability of label 1 at or above which an image is label 1: auto (chosen on "
                               "out-of-fold predictions, stored in the model) or a number in [0, 1]", predict=True)
    input_height: int = key(0, "model input height of this stage, pixels (0: classifier.input_height)")
    input_width: int = key(0, "model input width of this stage, pixels (0: classifier.input_width)")
    # a rotation tilts a head (pose) and a shift or zoom can cut a body off (framing)
    rotate: bool = key(True, "augment with the rotation of classifier.augment")
    shift: bool = key(True, "augment with the shift and zoom of classifier.augment")


@dataclass(frozen=True)
class ClassifierConfig:
    arch: str = key("resnet152", "torchvision ResNet: resnet10 (no ImageNet weights; CPU-fast), resnet18, "
                                 "resnet34, resnet50, resnet101 or resnet152")
    input_height: int = key(960, "model input height, pixels (the canvas is resized to it)")
    input_width: int = key(384, "model input width, pixels")
    pretrained: Weights = key(False, "false: from scratch; true: ImageNet weights in the local torch hub cache "
                                     "(never downloaded); or the path of a ResNet state-dict file")
    # balanced batches: a rare defect (a few positives among hundreds) is in every batch
    balance: bool = key(True, "each training batch draws both classes equally often (sampling with replacement)")
    folds: int = key(3, "k-fold training over the labels for out-of-fold scores and the automatic threshold "
                        "(0: no folds; the threshold is then 0.5)")
    # white-background scans are few, and an inverted white scan looks like a black one
    share_backgrounds: bool = key(
        True, "stages 5 and 6 also learn from the other background's labels, polarity swapped")
    # a first label file of ~100 images is 13 batches an epoch: 30 epochs are too few steps for
    # a rare defect's ~10 positives (measured at demo sizes: docs/performance.md, few-label QC)
    train: TrainConfig = section(lambda: TrainConfig(min_steps=960), "training")
    # every QC question (bone image, framing, contrast, head pose) has the same answer in a
    # mirror image and on the other background (white-background scans are inverted renderings)
    augment: AugmentConfig = section(lambda: AugmentConfig(hflip=0.5, invert=0.5), "training augmentation")
    # each QC question looks where its defect is, with augmentation that cannot create or remove it
    body: QcStageConfig = section(QcStageConfig, "stage 2: whole-body bone image")
    # the bands and the head are a quarter to a third of the scan's rows: half the input height
    # shows them at more than twice the resolution the whole image gets
    crop: QcStageConfig = section(lambda: QcStageConfig(region="bands", input_height=480, shift=False),
                                  "stage 3: framing")
    contrast: QcStageConfig = section(QcStageConfig, "stage 5: contrast")
    pose: QcStageConfig = section(lambda: QcStageConfig(region="head", input_height=480, rotate=False),
                                  "stage 6: head pose")

    def stage(self, task: str) -> "QcStageConfig":
        """The settings of one classifier stage (task: body, crop, contrast or pose)."""
        return getattr(self, task)

    def stage_names(self) -> list[str]:
        """The classifier stages that have a section here (the registry's tasks: body, crop, ...)."""
        return [f.name for f in dataclasses.fields(self) if f.type in (QcStageConfig, "QcStageConfig")]

    def input_size(self, task: str) -> tuple[int, int]:
        """(height, width) of one classifier stage's model input."""
        stage = self.stage(task)
        return stage.input_height or self.input_height, stage.input_width or self.input_width


@dataclass(frozen=True)
class SegmenterConfig:
    arch: str = key("unet", "segmentation-models-pytorch network: unet, unetplusplus or fpn")
    encoder: str = key("resnet152", "ResNet encoder: resnet18 ... resnet152")
    decoder_channels: int = key(256, "channels of the decoder's widest block; the U-Net's next blocks halve them "
                                     "(at least 16). Fewer: a faster CPU model")
    input_height: int = key(960, "model input height, pixels")
    input_width: int = key(384, "model input width, pixels")
    pretrained: Weights = key(False, "encoder start: false (scratch), true (local ImageNet weights) or the path "
                                     "of an encoder or ResNet state-dict file")
    point_radius: float = key(24.0, "disc radius of point targets, input pixels")
    point_weight: float = key(10.0, "BCE weight of the point channels")
    point_bias: float = key(-2.2, "initial output bias of the point channels (points are rare pixels)")
    threshold: float = key(0.5, "mask probability threshold in stage 8", predict=True)
    mask_floor: float = key(0.01, "probabilities under this are saved as 0 in the PNG masks", predict=True)
    save_npy: bool = key(False, "also save the float masks as .npy", predict=True)
    share_backgrounds: bool = key(
        True, "the black and white U-Nets also learn from each other's LabelMe files, polarity swapped")
    train: TrainConfig = section(lambda: TrainConfig(epochs=100, batch_size=4), "training")
    augment: AugmentConfig = section(lambda: AugmentConfig(hflip=0.5), "training augmentation")


@dataclass(frozen=True)
class PredictConfig:
    batch_size: int = key(16, "classifier batch size", machine=True)
    # on a CPU each of the two prediction lanes holds one batch's activations
    segmenter_batch_size: int = key(16, "U-Net batch size (stage 7)", machine=True)
    workers: int = key(2, "DataLoader workers (0 on a CPU: two prediction lanes in threads)", machine=True)
    chunk_size: int = key(1024, "images per resumable chunk: a re-run after a kill redoes at most one chunk",
                          machine=True)


# CPU flags (Linux /proc/cpuinfo names) of native bfloat16 arithmetic. Without them oneDNN
# emulates bfloat16: on an AVX2-only CPU a batch of the demo U-Net took 3.6 s against 0.70 s in
# float32, a training step about 11x longer; with AMX, bfloat16 was about 2x faster than float32.
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def has_native_bf16(cpu_flags: Iterable[str]) -> bool:
    """True when a CPU with these flags computes bfloat16 natively."""
    return not NATIVE_BF16_FLAGS.isdisjoint(cpu_flags)


def this_cpu_flags() -> frozenset[str]:
    """This machine's CPU flags as /proc/cpuinfo names them (empty where it does not say)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags")),
                          []))


@functools.lru_cache(maxsize=1)
def this_cpu_has_native_bf16() -> bool:
    """`has_native_bf16` for this machine's CPU (False where /proc/cpuinfo does not say)."""
    return has_native_bf16(this_cpu_flags())


@dataclass(frozen=True)
class RuntimeConfig:
    cpu_bf16: bool = field(default_factory=this_cpu_has_native_bf16, metadata={
        MEANING: "bfloat16 autocast + channels_last on CPU; auto = where the CPU has native bfloat16",
        MACHINE: True})
    threads: int = key(0, "torch intra-op threads (0 = torch default)", machine=True)


@dataclass(frozen=True)
class Config:
    runtime: RuntimeConfig = section(RuntimeConfig, "how the models run")
    dicom: DicomConfig = section(DicomConfig, "stage 1: reading zips and DICOM files")
    canvas: CanvasConfig = section(CanvasConfig, "the common image canvas")
    background: BackgroundConfig = section(BackgroundConfig, "stage 4: background values")
    classifier: ClassifierConfig = section(ClassifierConfig, "stages 2, 3, 5, 6: QC classifiers")
    segmenter: SegmenterConfig = section(SegmenterConfig, "stage 7: landmark U-Net; stage 8: mask threshold")
    predict: PredictConfig = section(PredictConfig, "prediction in every model stage")


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
    if typ == Weights:
        return _weights_value(value, key)
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
        raise ConfigError(f"{key}: {value!r} is not a valid {typ.__name__}{or_auto}", key) from None
    raise ConfigError(f"{key}: unsupported type {typ}", key)


# keys that also take "auto": the built-in default, which depends on the machine
AUTO_KEYS = frozenset({"runtime.cpu_bf16"})


def _build(cls, data: Any, prefix: str = ""):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types), key=str)
    if unknown:
        # the leaf keys the user meant to set, for the suggestions (a misspelt section's keys)
        wrong = [leaf for k in unknown for leaf in _leaf_keys(f"{prefix}{k}", data[k])]
        raise ConfigError(unknown_key_message([f"{prefix}{k}" for k in unknown], wrong), f"{prefix}{unknown[0]}")
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


def _leaf_keys(key: str, value: Any) -> list[str]:
    """The dotted leaf keys of a value given at `key` (a mapping is a section of keys)."""
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaf_keys(f"{key}.{k}", v)]
    return [key]


SHOWN_KEYS = 8  # valid keys listed in an unknown-key message (every key: configs/default.yaml)


def nearest_keys(wrong: str, limit: int = 4) -> list[str]:
    """The valid keys a wrong dotted key most likely meant: those with the same last part
    (classifier.epochs -> classifier.train.epochs), else with a similar one (archh -> arch),
    in the same top section where there are such, the most similar first."""
    keys = valid_keys()
    leaf = wrong.rsplit(".", 1)[-1]
    leaves = {k: k.rsplit(".", 1)[-1] for k in keys}
    found = [k for k in keys if leaves[k] == leaf]
    if not found:
        # 0.75: a letter or two wrong; looser matches were mostly noise
        near = set(difflib.get_close_matches(leaf, set(leaves.values()), n=limit, cutoff=0.75))
        found = [k for k in keys if leaves[k] in near]
    top = wrong.split(".", 1)[0] + "."
    found = [k for k in found if k.startswith(top)] or found
    return sorted(found, key=lambda k: -difflib.SequenceMatcher(None, wrong, k).ratio())[:limit]


def section_keys(section: str) -> list[str]:
    """The keys directly in a config section ('' = the top level), sub-sections as 'name.*'."""
    cls = Config
    for part in filter(None, section.split(".")):
        cls = _field_types(cls).get(part)
        if not dataclasses.is_dataclass(cls):
            return []
    prefix = f"{section}." if section else ""
    return [f"{prefix}{name}{'.*' if dataclasses.is_dataclass(typ) else ''}"
            for name, typ in _field_types(cls).items()]


def unknown_key_message(unknown: list[str], wrong: Optional[list[str]] = None) -> str:
    """'unknown config key K; did you mean A or B?; valid keys in S: ...' with a handful of keys."""
    guesses = list(dict.fromkeys(k for w in (wrong or unknown) for k in nearest_keys(w)))[:4]
    mean = f"; did you mean {' or '.join(guesses)}?" if guesses else ""
    section = unknown[0].rpartition(".")[0]
    if not section_keys(section):  # a key under a plain key (epochs.x): list its section's
        section = section.rpartition(".")[0]
    keys = section_keys(section)
    more = f", ... ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else ""
    return (f"unknown config key(s) {', '.join(unknown)}{mean}; valid keys in {section or 'the config'}: "
            f"{', '.join(keys[:SHOWN_KEYS])}{more}; every key with its meaning: configs/default.yaml")


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
    """Split 'a.b=value' into (['a', 'b'], value parsed as YAML scalar); a key that is not a
    valid key (a typo, or a whole section) is refused here, naming the --set."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key.sub=value")
    dotted = key.strip()
    if dotted not in valid_keys():
        if section_keys(dotted):
            raise ConfigError(f"--set {text}: {dotted} is a section, not a key; its keys: "
                              f"{', '.join(section_keys(dotted)[:SHOWN_KEYS])}", dotted)
        raise ConfigError(f"--set {text}: {unknown_key_message([dotted])}", dotted)
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
    file_data = copy.deepcopy(data)
    given: dict[str, str] = {}  # dotted key -> the --set text that gave it
    for text in overrides:
        keys, value = parse_override(text)
        given[".".join(keys)] = text
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
        raise ConfigError(_blame(exc, path, file_data, given), exc.key) from None


def _blame(exc: ConfigError, path: Optional[Path], file_data: dict, given: dict[str, str]) -> str:
    """The message of a config error, prefixed with what caused it: the --set that set the
    key at fault, else the config file (when the file alone has the error), else --set."""
    if exc.key in given:
        return f"--set {given[exc.key]}: {exc}"
    if given:
        try:
            check_values(_build(Config, file_data))
        except ConfigError:
            pass  # the file alone has an error too: name the file
        else:
            return f"--set {' '.join(given.values())}: {exc}"
    return f"{path}: {exc}" if path else str(exc)


# The networks shrink their input 32-fold. On CPUs with AMX, bfloat16 training of a ResNet
# whose deepest feature map is 1 pixel wide or high (e.g. a 64x32 input) gave different
# weights on every run and sometimes NaN (torch 2.14.1, oneDNN 3.12); 2x2 and larger did not.
MIN_BF16_INPUT_SIDE = 64


def fixed_threshold(stage: QcStageConfig) -> Optional[float]:
    """A classifier stage's threshold when the config fixes one; None for auto."""
    return None if str(stage.threshold).strip().lower() == AUTO else float(stage.threshold)


def _check_classifier_stages(c: ClassifierConfig) -> None:
    from hbr.imaging import REGIONS  # here: OpenCV is not imported to parse a config

    if c.folds == 1 or c.folds < 0:
        raise ConfigError(f"classifier.folds = {c.folds}: must be 0 (no folds) or at least 2", "classifier.folds")
    for name in c.stage_names():
        stage = c.stage(name)
        for side in ("input_height", "input_width"):
            if getattr(stage, side) < 0:
                raise ConfigError(f"classifier.{name}.{side} = {getattr(stage, side)}: must be positive, or 0 for "
                                  f"classifier.{side}", f"classifier.{name}.{side}")
        if stage.region not in REGIONS:
            raise ConfigError(f"classifier.{name}.region = {stage.region!r}; valid: {', '.join(REGIONS)}",
                              f"classifier.{name}.region")
        try:
            value = fixed_threshold(stage)
        except ValueError:
            value = -1.0
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"classifier.{name}.threshold = {stage.threshold!r}: must be auto or a number in [0, 1]",
                              f"classifier.{name}.threshold")


# Ranges of the numeric keys: (test, what it requires). A value outside fails at once with
# the key's name, instead of deep in a stage (a batch of 0, a threshold of 1.5, ...).
AT_LEAST_1 = (lambda v: v >= 1, "must be at least 1")
POSITIVE = (lambda v: v > 0, "must be positive")
NOT_NEGATIVE = (lambda v: v >= 0, "must be 0 or more")
PROBABILITY = (lambda v: 0 <= v <= 1, "must be in [0, 1]")
BELOW_1 = (lambda v: 0 <= v < 1, "must be in [0, 1)")
TRAIN_RANGES = {"epochs": AT_LEAST_1, "min_steps": NOT_NEGATIVE, "batch_size": AT_LEAST_1, "lr": POSITIVE,
                "weight_decay": NOT_NEGATIVE, "val_fraction": BELOW_1, "workers": NOT_NEGATIVE,
                "time_limit_min": NOT_NEGATIVE, "min_images": AT_LEAST_1}
AUGMENT_RANGES = {"rotate_deg": NOT_NEGATIVE, "scale": NOT_NEGATIVE, "shift": NOT_NEGATIVE, "gamma": NOT_NEGATIVE,
                  "brightness": NOT_NEGATIVE, "noise": NOT_NEGATIVE, "hflip": PROBABILITY, "invert": PROBABILITY}
RANGES = {
    "runtime.threads": NOT_NEGATIVE,
    "dicom.max_member_mb": POSITIVE, "dicom.workers": NOT_NEGATIVE,
    "canvas.height": AT_LEAST_1, "canvas.width": AT_LEAST_1,
    "background.black": NOT_NEGATIVE, "background.white": NOT_NEGATIVE, "background.corner": AT_LEAST_1,
    "classifier.input_height": AT_LEAST_1, "classifier.input_width": AT_LEAST_1,
    "segmenter.input_height": AT_LEAST_1, "segmenter.input_width": AT_LEAST_1,
    "segmenter.decoder_channels": (lambda v: v >= 16, "must be at least 16"),
    "segmenter.point_radius": POSITIVE, "segmenter.point_weight": NOT_NEGATIVE,
    "segmenter.threshold": BELOW_1,  # stage 8 keeps mask pixels >= threshold: 1 would keep none
    "predict.batch_size": AT_LEAST_1, "predict.segmenter_batch_size": AT_LEAST_1, "predict.chunk_size": AT_LEAST_1,
    "predict.workers": NOT_NEGATIVE,
    **{f"{model}.train.{k}": rule for model in ("classifier", "segmenter") for k, rule in TRAIN_RANGES.items()},
    **{f"{model}.augment.{k}": rule for model in ("classifier", "segmenter") for k, rule in AUGMENT_RANGES.items()},
}


def config_value(cfg: Any, key: str) -> Any:
    """The value of a dotted key, e.g. config_value(cfg, 'classifier.train.epochs')."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_values(cfg: Config) -> Config:
    """Refuse values that parse but cannot work; returns `cfg`."""
    for key_name, (ok, requirement) in RANGES.items():
        value = config_value(cfg, key_name)
        if not ok(value):
            raise ConfigError(f"{key_name} = {value}: {requirement}", key_name)
    _check_classifier_stages(cfg.classifier)
    if cfg.background.black == cfg.background.white:
        raise ConfigError(f"background.black and background.white are both {cfg.background.black}: they must differ",
                          "background.white")
    s = cfg.segmenter
    if not 0.0 <= s.mask_floor <= s.threshold:
        raise ConfigError(f"segmenter.mask_floor = {s.mask_floor}: must be between 0 and segmenter.threshold "
                          f"({s.threshold}), or stage 8 would miss mask pixels", "segmenter.mask_floor")
    if cfg.runtime.cpu_bf16:
        sides = [(f"{section}.{side}", getattr(getattr(cfg, section), side))
                 for section in ("classifier", "segmenter") for side in ("input_height", "input_width")]
        sides += [(f"classifier.{task} input {name}", value) for task in cfg.classifier.stage_names()
                  for name, value in zip(("height", "width"), cfg.classifier.input_size(task))]
        for key_name, value in sides:
            if value < MIN_BF16_INPUT_SIDE:
                raise ConfigError(
                    f"{key_name} = {value}: with runtime.cpu_bf16 each input side must be at least "
                    f"{MIN_BF16_INPUT_SIDE} (smaller inputs train nondeterministically on some CPUs); "
                    "use a larger input or runtime.cpu_bf16=false", key_name.split(" ")[0]
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


DEFAULT_YAML_HEADER = """\
# Full-size models as upstream: ResNet152 classifiers and a U-Net(resnet152) at 960x384.
# Every key, with its default and meaning. Override any with --set key.sub=value; a config
# file needs only the keys it changes (see configs/demo.yaml).
# Generated from hbr/config.py: python -m hbr.config > configs/default.yaml
"""


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _commented_lines(section: Any, indent: str = "", prefix: str = "") -> list[str]:
    lines = []
    for f in dataclasses.fields(section):
        value, meaning = getattr(section, f.name), f.metadata.get(MEANING, "")
        comment = f"  # {meaning}" if meaning else ""
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:{comment}")
            lines += _commented_lines(value, indent + "  ", f"{prefix}{f.name}.")
        else:
            text = "auto" if prefix + f.name in AUTO_KEYS else _yaml_scalar(value)
            lines.append(f"{indent}{f.name}: {text}{comment}")
    return lines


def default_yaml() -> str:
    """configs/default.yaml: every key of the built-in defaults with its meaning as a comment."""
    return DEFAULT_YAML_HEADER + "\n".join(_commented_lines(Config())) + "\n"


if __name__ == "__main__":
    print(default_yaml(), end="")
