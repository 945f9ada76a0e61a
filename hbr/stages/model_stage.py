"""What every model stage does alike: find or train its model, then predict in resumable chunks."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Optional

import pandas as pd
import torch

from hbr.cli import DEFAULT_LABELS, Context
from hbr.config import PredictConfig, RuntimeConfig, config_hash
from hbr.data import Preprocess
from hbr.devices import configure_threads, resolve_device, to_device_for_inference
from hbr.errors import HbrError
from hbr.files import remove_stale, write_json, write_tsv
from hbr.models import checkpoint_meta, model_from_checkpoint, read_checkpoint, save_checkpoint
from hbr.training import TrainResult

PREDICT_CHUNK = PredictConfig().chunk_size  # default images per resumable chunk (config predict.chunk_size)



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
    given = Path(ctx.args.labels) if ctx.args.labels is not None else None
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


def model_file(ctx: Context, model_name: str) -> Path:
    """Checkpoint path: in --models DIR when given, else in WORKDIR/models."""
    root = Path(ctx.args.models) if ctx.args.models is not None else ctx.workdir / "models"
    return root / model_name / "model.pt"


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


def finish_without_images(ctx: Context, table_path: Path, columns: list[str], clear: Iterable[Path]) -> None:
    """An input folder with no images: write an empty table, empty the outputs, need no model."""
    write_tsv(table_path, pd.DataFrame(columns=columns))
    for folder in clear:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale(folder, ())
    print(f"{ctx.stage}: no input images; wrote an empty {table_path}")


def _current_checkpoint(path: Path, wanted_hash: str) -> Optional[dict]:
    """The checkpoint at `path` if it was trained with `wanted_hash`, else None."""
    if not path.is_file():
        return None
    ckpt = read_checkpoint(path)
    return ckpt if ckpt.get("config_hash") == wanted_hash else None


def save_trained(path: Path, model: torch.nn.Module, result: TrainResult, meta: dict) -> None:
    """Save the best weights as a self-describing checkpoint plus metrics JSON beside it."""
    model.load_state_dict(result.state_dict)
    save_checkpoint(path, model, {**meta, "metrics": result.metrics})
    write_json(metrics_file(path), {"best": result.metrics, "history": result.history, **meta})
    print(f"model saved: {path} (metrics: {metrics_file(path)})")


def obtain_model(
    ctx: Context,
    model_name: str,
    settings: tuple,
    label_paths: Callable[[], list[Path]],
    train_model: Callable[[Path, str], None],
    device: torch.device,
):
    """Train and/or load the stage's model as --mode and --models ask: (model, meta), or None in
    train mode. The model is a Future (it is built while prediction starts); hbr.prediction
    takes it as it is.

    `settings` are the config sections that shape training; with the labels' digest
    they make the config hash stored in the checkpoint, so `run` retrains only when
    the labels or these settings changed.
    """
    mode, given_models = ctx.args.mode, ctx.args.models is not None
    path = model_file(ctx, model_name)
    ckpt = None
    if given_models and mode == "train":
        raise HbrError("--models is for prediction with existing models; train without it")
    if given_models or mode == "predict":
        if not path.is_file():
            raise HbrError(f"no model at {path}; train it first (--mode train) or give --models DIR")
    else:
        wanted = config_hash(*settings, files_digest(label_paths()))
        ckpt = None if mode == "train" else _current_checkpoint(path, wanted)
        if ckpt is None:
            print(f"training {model_name} ({'asked' if mode == 'train' else 'no model for these labels and config'})")
            train_model(path, wanted)
        else:
            print(f"using trained model {path} (labels and config unchanged)")
        if mode == "train":
            return None
    if ckpt is None:  # predicting with given models, or just trained
        ckpt = read_checkpoint(path)
    return _build_in_background(ckpt, path, device, ctx.cfg.runtime), checkpoint_meta(ckpt)


def _build_in_background(ckpt: dict, path: Path, device: torch.device, runtime: RuntimeConfig) -> Future:
    """Build the network of a read checkpoint on `device` in a thread: the first images are
    read and prepared meanwhile (about 0.1-0.15 s a stage on a CPU, see hbr.prediction)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hbr-model")
    try:
        return pool.submit(lambda: to_device_for_inference(model_from_checkpoint(ckpt, path), device, runtime))
    finally:
        pool.shutdown(wait=False)
