"""The one recipe every model stage (2, 3, 5, 6, 7) follows: find or train its model, then
predict every input image in resumable chunks and write the stage's table."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pandas as pd
import torch

from hbr.cli import DEFAULT_LABELS, Context
from hbr.config import RuntimeConfig, config_hash
from hbr.data import Preprocess
from hbr.devices import configure_threads, resolve_device, to_device_for_inference
from hbr.errors import HbrError
from hbr.files import link_or_copy, list_images, remove_stale, write_json, write_tsv
from hbr.models import CHECKPOINT_FORMAT, checkpoint_meta, model_from_checkpoint, read_checkpoint, save_checkpoint
from hbr.pipeline import BACKGROUNDS, SEGMENTER, STATE_DIR, image_folders, other_background, producer
from hbr.resume import run_chunks
from hbr.training import TrainResult


def files_digest(paths: Iterable[Path]) -> str:
    """SHA-256 over the names and contents of label files (a change means retraining)."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def label_location(ctx: Context, default_names: Iterable[str], folder_of_files: bool = False) -> Path:
    """The stage's labels: --labels (a file, or a folder holding the stage's default name), else labels/.

    With `folder_of_files` (LabelMe JSON) a --labels folder without a matching
    sub-folder is taken to be the folder of label files itself.
    """
    given = ctx.options.labels
    if given is not None and given.is_file():
        return given
    root = given if given is not None else DEFAULT_LABELS
    names = list(default_names)
    for name in names:
        if (root / name).exists():
            return root / name
    if folder_of_files and given is not None and given.is_dir():
        return given
    return root / names[0]


def metrics_file(checkpoint: Path) -> Path:
    """The JSON of training metrics kept beside a checkpoint."""
    return checkpoint.with_name("metrics.json")


def preprocess_for(ctx: Context, input_h: int, input_w: int) -> Preprocess:
    """The preprocessing of a new model: the configured canvas and input size."""
    return Preprocess(ctx.cfg.canvas.height, ctx.cfg.canvas.width, input_h, input_w)


def stage_device(ctx: Context) -> torch.device:
    """Resolve --device and apply the thread setting."""
    configure_threads(ctx.cfg.runtime)
    return resolve_device(ctx.device)


def save_trained(path: Path, model: torch.nn.Module, result: TrainResult, meta: dict,
                 per_image: Optional[dict] = None) -> None:
    """Save the best weights as a self-describing checkpoint plus metrics JSON beside it;
    `per_image` (results that name images) goes to the JSON only."""
    model.load_state_dict(result.state_dict)
    save_checkpoint(path, model, {**meta, "metrics": result.metrics})
    write_json(metrics_file(path), {"best": result.metrics, "history": result.history, **meta, **(per_image or {})})
    print(f"model saved: {path} (metrics: {metrics_file(path)})")


@dataclass(frozen=True)
class Training:
    """How a stage trains its model.

    `settings` are the config values that shape training (see config.training_values);
    with the digest of `label_files()` they make the retrain key stored in the checkpoint,
    so `run` retrains exactly when the labels or these settings changed. `train_into(path,
    key)` reads the labels, trains and saves the checkpoint.
    """

    settings: tuple
    labels: Path  # the stage's own label file or LabelMe folder (see label_location)
    label_files: Callable[[], list[Path]]
    train_into: Callable[[Path, str, torch.device], None]
    # model files of the other background that may hold this very model (black and white
    # share one model when they learn from each other's labels): reused instead of retrained
    shared_with: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Prediction:
    """How a stage predicts: a chunk of image ids -> table rows, and what to do with the table.

    `version` names what besides the model changes the rows (e.g. the threshold), so resumed
    chunks are reused only for the same work.
    """

    columns: list[str]
    version: str
    # (model, meta, npy_dir, chunk, device, advance): advance(n) counts images done (hbr.resume)
    predict_chunk: Callable[[Any, dict, Path, list[str], torch.device, Callable[[int], None]], pd.DataFrame]
    finish: Callable[[pd.DataFrame], None]
    empty_folders: Callable[[], list[Path]]  # output folders emptied when there is no input image


def run_model_stage(ctx: Context, training: Training, prediction: Prediction) -> None:
    """Train and/or predict one model stage as --mode asks, and write its table."""
    stage, bak, mode = ctx.stage, ctx.options.background, ctx.options.mode
    npy_dir, _ = image_folders(ctx.workdir, stage.input(bak))
    table_path = ctx.workdir / stage.table_name(bak)
    if mode != "train" and not npy_dir.is_dir():
        previous = producer(stage)
        raise HbrError(f"input folder {npy_dir} not found: run {previous.script}{f' {bak}' if previous.per_background else ''} first")
    ids = list_images(npy_dir)
    if mode != "train" and not ids:
        write_tsv(table_path, pd.DataFrame(columns=prediction.columns))
        for folder in prediction.empty_folders():
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale(folder, ())
        print(f"{stage.name}: no input images; wrote an empty {table_path}")
        return
    device = stage_device(ctx)
    loaded = obtain_model(ctx, training, device)
    if loaded is None:
        return
    model, meta = loaded
    table = run_chunks(
        ids, ctx.workdir / STATE_DIR / ctx.run_name, f"{meta['config_hash']}-{prediction.version}",
        ctx.cfg.predict.chunk_size,
        lambda chunk, advance: prediction.predict_chunk(model, meta, npy_dir, chunk, device, advance),
        desc=ctx.run_name,
    )
    write_tsv(table_path, table)
    prediction.finish(table)


def _current_checkpoint(path: Path, wanted_hash: str) -> tuple[Optional[dict], str]:
    """(the checkpoint at `path` if it was trained with `wanted_hash`, else None; why it is not)."""
    if not path.is_file():
        return None, "no model for these labels and config"
    ckpt = read_checkpoint(path)
    if ckpt.get("config_hash") == wanted_hash:
        return ckpt, ""
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        return None, (f"the model at {path} was saved by an earlier hbr ({ckpt.get('format')}) whose retrain key "
                      "is computed differently: retraining once")
    return None, "the labels or training settings changed"


def _reuse_shared(candidates: Iterable[Path], path: Path, wanted_hash: str) -> Optional[dict]:
    """The checkpoint of another background's stage trained with `wanted_hash` (the same
    labels and settings: the same model), linked into `path`; None when there is none."""
    for other in candidates:
        ckpt, _ = _current_checkpoint(other, wanted_hash)
        if ckpt is not None:
            link_or_copy(other, path)
            if metrics_file(other).is_file():
                link_or_copy(metrics_file(other), metrics_file(path))
            print(f"using the model of {other.parent.name} ({other}): black and white share one model, "
                  "trained on both label sets (share_backgrounds)")
            return ckpt
    return None


def training_polarity(bak: Optional[str], shared: bool) -> Optional[str]:
    """The background whose polarity a model trains in: the first background when black and
    white share one model, else the stage's own (None before the background split)."""
    return BACKGROUNDS[0] if bak is not None and shared else bak


def shared_model_files(ctx: Context, shared: bool) -> tuple[Path, ...]:
    """Where the other background's model of this stage is, when the two share one."""
    bak = ctx.options.background
    if not shared or bak is None:
        return ()
    root = ctx.model_file.parent.parent
    return (root / ctx.stage.run_name(other_background(bak)) / "model.pt",)


def prediction_preprocess(ctx: Context, meta: dict) -> Preprocess:
    """A checkpoint's preprocessing for this stage's images, shown in the polarity the model
    trained in (models saved before polarities were recorded trained in their own)."""
    prep = Preprocess(**meta["preprocess"])
    bak = ctx.options.background
    polarity = meta.get("polarity") or bak
    if bak is not None and polarity != bak:
        prep = replace(prep, swap_polarity=(ctx.cfg.background.black, ctx.cfg.background.white))
    return prep


def obtain_model(ctx: Context, training: Training, device: torch.device):
    """Train and/or load the stage's model as --mode and --models ask: (model, meta), or None in
    train mode. The model is a Future (it is built while prediction starts); hbr.prediction
    takes it as it is."""
    mode, given_models = ctx.options.mode, ctx.options.models is not None
    path = ctx.model_file
    ckpt = None
    if given_models and mode == "train":
        raise HbrError("--models is for prediction with existing models; train without it")
    if given_models or mode == "predict":
        if not path.is_file():
            raise HbrError(f"no model at {path}; train it first (--mode train) or give --models DIR")
    else:
        if not training.labels.exists():
            raise HbrError(missing_labels_message(ctx, training.labels, path))
        wanted = config_hash(*training.settings, files_digest(training.label_files()))
        ckpt, why = (None, "asked") if mode == "train" else _current_checkpoint(path, wanted)
        if ckpt is None and mode != "train":
            ckpt = _reuse_shared(training.shared_with, path, wanted)
        if ckpt is None:
            print(f"training {ctx.run_name} ({why})")
            training.train_into(path, wanted, device)
        else:
            print(f"using trained model {path} (labels and config unchanged)")
        if mode == "train":
            return None
    if ckpt is None:  # predicting with given models, or just trained
        ckpt = read_checkpoint(path)
    return _build_in_background(ckpt, path, device, ctx.cfg.runtime), checkpoint_meta(ckpt)


LABELLING_SECTION = "Labelling your own scans"  # the README section on making labels


def missing_labels_message(ctx: Context, labels: Path, model: Path) -> str:
    """What a first run without labels or models needs (one line): which label file is
    missing, and the two ways on: label with the labelling tools, or give --models."""
    stage, workdir = ctx.stage, ctx.workdir
    which = f"{stage.number} {ctx.options.background}" if stage.per_background else f"{stage.number}"
    folder = labels.parent
    pick = f"python -m hbr.labelling.pick {which} --workdir {workdir}"
    if stage.kind == SEGMENTER:
        make = f"{pick}, then draw the landmarks in LabelMe into {labels}/"
    else:
        make = f"{pick}, then python -m hbr.labelling.page --workdir {workdir} --labels {folder}"
    if model.is_file():  # not a first run: the labels were moved, or --labels points elsewhere
        return (f"no labels: {labels} not found, so the model at {model} cannot be checked against them; "
                "give --labels, or predict with that model: --mode predict")
    return (f"no labels: {labels} not found and no trained model in {model.parent}. Either label your scans: "
            f"{make} (README.md, '{LABELLING_SECTION}'); or predict with trained models: --models DIR")


def _build_in_background(ckpt: dict, path: Path, device: torch.device, runtime: RuntimeConfig) -> Future:
    """Build the network of a read checkpoint on `device` in a thread: the first images are
    read and prepared meanwhile."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hbr-model")
    try:
        return pool.submit(lambda: to_device_for_inference(model_from_checkpoint(ckpt, path), device, runtime))
    finally:
        pool.shutdown(wait=False)
