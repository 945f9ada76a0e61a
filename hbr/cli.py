"""The command line every stage shares (SPEC 2b), written once.

A stage's options follow from its kind in the registry (hbr.pipeline), so `entry(stage)`
builds and parses the command line before the stage module (and torch) is imported: `-h`
is instant. The stage module provides `run(ctx)`; its `main(argv)` is `cli.entry(stage,
argv)`. Below this module, stages read typed `Options`, never the argparse Namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from hbr import __version__
from hbr.errors import HbrError
from hbr.landmarks import LANDMARKS
from hbr.pipeline import BACKGROUNDS, DICOM, LOGS_DIR, MEASURE, MODELS_DIR, SEGMENTER, Stage, stage as registry_stage
from hbr import shards
from hbr.shards import Shard, parse_shard

if TYPE_CHECKING:
    from hbr.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
DEFAULT_LABELS = REPO_ROOT / "labels"
MODES = ("run", "train", "predict")


@dataclass(frozen=True)
class Options:
    """The stage-specific command-line options, typed; each stage reads the ones it has."""

    mode: str = "run"  # model stages: run, train or predict
    labels: Optional[Path] = None  # model stages: --labels
    models: Optional[Path] = None  # model stages: --models
    background: Optional[str] = None  # per-background stages
    landmarks: tuple[str, ...] = ()  # stage 7: restrict to these (empty: all)
    input: Optional[Path] = None  # stage 1: --input
    workers: int = 0  # stage 8: threads reading masks (0: automatic)
    report: bool = True  # stage 8: write the HTML report
    shard: Optional[Shard] = None  # --shard: work on this shard of the input, in its own folder


@dataclass(frozen=True)
class Context:
    """What a stage's `run` needs: the stage, where to work, the resolved config and its options."""

    stage: Stage
    workdir: Path
    cfg: "Config"
    device: str = "auto"
    options: Options = field(default_factory=Options)

    @property
    def run_name(self) -> str:
        """The stage's name, with the background for a per-background stage (e.g. 6_pose_class_white)."""
        return self.stage.run_name(self.options.background)

    @property
    def model_file(self) -> Path:
        """Checkpoint path of the stage's model: in --models DIR when given, else in WORKDIR/models."""
        root = self.options.models if self.options.models is not None else self.workdir / MODELS_DIR
        return root / self.run_name / "model.pt"


def describe_stage(stage: Stage) -> str:
    """The -h description of a stage: what it does, and for a classifier its labels."""
    text = f"Stage {stage.number}: {stage.summary}."
    if stage.kind == "classifier":
        files = " and ".join(stage.labels)
        text += (f" Labels: {files} in the labels folder; Label 1 = {stage.meaning[1]}, Label 0 = {stage.meaning[0]};"
                 f" images predicted as Label {stage.keep_label} are kept.")
    return text


def build_parser(stage: Stage) -> argparse.ArgumentParser:
    """Parser with the options every stage takes."""
    parser = argparse.ArgumentParser(
        prog=stage.script, description=describe_stage(stage), formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"hbr {__version__}")
    parser.add_argument("--workdir", type=Path, default=Path("work"), help="work directory")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. classifier.train.epochs=5 (repeatable)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        metavar="I/N",
        help="work on shard I of N (from 0) of the input, in WORKDIR/shards/I_of_N; N alone takes I from "
        "SLURM_ARRAY_TASK_ID. Needs --models; merge with `python -m hbr.shards merge`",
    )
    return parser


def add_background_argument(parser: argparse.ArgumentParser) -> None:
    """The black|white positional of the per-background stages."""
    parser.add_argument("background", choices=BACKGROUNDS, help="background of the images")


def add_landmark_argument(parser: argparse.ArgumentParser) -> None:
    """Optional landmark names restricting stage 7 (default: all)."""
    # no `choices`: argparse rejects an empty list against them; run() checks the names
    parser.add_argument(
        "landmarks",
        nargs="*",
        metavar="landmark",
        help=f"restrict to these landmarks ({', '.join(LANDMARKS)}); default all",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--mode, --labels and --models of the stages that own a model."""
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="run",
        help="train, predict, or run (train when no model fits the labels+config, then predict)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help=f"label file or folder (default: the matching one in {DEFAULT_LABELS})",
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="folder of trained models to predict with (default: WORKDIR/models)",
    )


def add_input_argument(parser: argparse.ArgumentParser) -> None:
    """Stage 1's --input."""
    parser.add_argument(
        "--input",
        type=Path,
        required=True,
        help="folder of zips (also .dcm files and sub-folders of .dcm files), one zip, or one .dcm file",
    )


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    """Stage 8's --no-report and --workers."""
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip the HTML QC report")
    parser.add_argument(
        "--workers", type=int, default=0, help="threads reading masks (0: one per CPU core, at most 4)"
    )


def add_stage_arguments(parser: argparse.ArgumentParser, stage: Stage) -> None:
    """The options of `stage` beyond the common ones, from its kind in the registry."""
    if stage.kind == DICOM:
        add_input_argument(parser)
    if stage.per_background:
        add_background_argument(parser)
    if stage.kind == SEGMENTER:
        add_landmark_argument(parser)
    if stage.has_model:
        add_model_arguments(parser)
    if stage.kind == MEASURE:
        add_measure_arguments(parser)


def options_from(args: argparse.Namespace) -> Options:
    """The typed options of a parsed command line (fields a stage does not take keep their default)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if hasattr(args, f.name)}
    if "landmarks" in given:
        given["landmarks"] = tuple(given["landmarks"] or ())
    return Options(**given)


def make_context(stage: Stage, args: argparse.Namespace) -> Context:
    """Load the config, create the work directory and record the resolved config in it."""
    from hbr.config import dump_config, load_config  # after parsing: -h stays fast
    from hbr.files import write_text

    cfg = load_config(args.config, args.overrides)
    workdir = args.workdir.resolve()
    if args.shard is not None:
        workdir = args.shard.folder(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(stage=stage, workdir=workdir, cfg=cfg, device=args.device, options=options_from(args))
    write_text(workdir / LOGS_DIR / f"{ctx.run_name}.config.yaml", dump_config(cfg))
    return ctx


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system failure: the path and what went wrong, with a hint for the
    common ones. An OSError does not say whether it came from a read or a write, so the line
    claims "cannot write" only for errors that only writes raise (disk full, read-only)."""
    path = f"{exc.filename}: " if exc.filename else ""
    text = {
        errno.ENOENT: "no such file or folder",
        errno.ENOSPC: "cannot write: the disk is full",
        errno.EDQUOT: "cannot write: disk quota exceeded",
        errno.EROFS: "cannot write: the file system is read-only",
        errno.EACCES: "permission denied (is the work directory read-only?)",
        errno.EPERM: "operation not permitted",
    }.get(exc.errno, exc.strerror or str(exc))
    return f"{path}{text}"


def call_reporting_errors(prog: str, action: Callable[[], object], after_interrupt: str = "") -> tuple[int, object]:
    """Run `action()`; a user error becomes one line on stderr instead of a traceback.

    Returns (exit status: 0, 1 for an HbrError or file-system error, 130 when interrupted;
    the action's result, or None when it failed).
    """
    try:
        return 0, action()
    except HbrError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1, None
    except OSError as exc:
        print(f"{prog}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1, None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{after_interrupt}", file=sys.stderr)
        return 130, None


def stage_parser(stage: Stage) -> argparse.ArgumentParser:
    """The complete command line of a stage (common options + those of its kind)."""
    parser = build_parser(stage)
    add_stage_arguments(parser, stage)
    return parser


def entry(key: int | str | Stage, argv: Optional[Sequence[str]] = None) -> int:
    """An entry script's whole main: parse the command line of a stage (number, name, task
    or Stage), then import its module and run it; user errors become one line + exit 1.

    The module (and with it torch) is imported only after parsing, so `-h`, `--version`
    and usage errors answer at once.
    """
    stage = key if isinstance(key, Stage) else registry_stage(key)
    args = stage_parser(stage).parse_args(argv)

    def run() -> object:
        ctx = make_context(stage, args)  # a config error is reported before torch loads
        if ctx.options.shard is not None:
            shards.begin_stage(ctx)
        result = importlib.import_module(stage.module).run(ctx)
        if ctx.options.shard is not None:
            shards.finish_stage(ctx)
        return result

    status, _ = call_reporting_errors(stage.name, run, "; re-run to continue where it stopped")
    return status
