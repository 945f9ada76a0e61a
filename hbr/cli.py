"""The command line every stage shares (SPEC 2b), written once.

A stage module provides `add_arguments(parser)` and `run(ctx)`; its `main(argv)` is
`cli.main(NAME, __doc__, add_arguments, run, argv)`.
"""

from __future__ import annotations

import argparse
import errno
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from hbr.config import Config, dump_config, load_config
from hbr.errors import HbrError
from hbr.files import write_text
from hbr.landmarks import LANDMARKS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
DEFAULT_LABELS = REPO_ROOT / "labels"
BACKGROUNDS = ("black", "white")
MODES = ("run", "train", "predict")


def other_background(bak: str) -> str:
    """The background that is not `bak` (black <-> white)."""
    return next(b for b in BACKGROUNDS if b != bak)


@dataclass(frozen=True)
class Context:
    """What a stage's `run` needs: where to work, the resolved config and its options."""

    stage: str
    workdir: Path
    cfg: Config
    device: str
    args: argparse.Namespace


def build_parser(stage: str, description: Optional[str]) -> argparse.ArgumentParser:
    """Parser with the options every stage takes."""
    parser = argparse.ArgumentParser(
        prog=f"{stage}.py",
        description=(description or "").strip().splitlines()[0] if description else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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


def make_context(stage: str, args: argparse.Namespace) -> Context:
    """Load the config, create the work directory and record the resolved config in it."""
    cfg = load_config(args.config, args.overrides)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    write_text(workdir / "logs" / f"{stage}.config.yaml", dump_config(cfg))
    return Context(stage=stage, workdir=workdir, cfg=cfg, device=args.device, args=args)


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system failure, with the path and a hint for the common ones."""
    where = f" {exc.filename}" if exc.filename else ""
    hint = {
        errno.ENOSPC: "the disk is full",
        errno.EACCES: "permission denied (is the work directory read-only?)",
        errno.EROFS: "the file system is read-only",
    }.get(exc.errno, exc.strerror or str(exc))
    return f"cannot write or read{where}: {hint}"


def main(
    stage: str,
    description: Optional[str],
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[Context], object],
    argv: Optional[Sequence[str]] = None,
) -> int:
    """Parse the command line, run the stage, and turn user errors into one line + exit 1."""
    parser = build_parser(stage, description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(make_context(stage, args))
    except HbrError as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{stage}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; re-run to continue where it stopped", file=sys.stderr)
        return 130
    return 0
