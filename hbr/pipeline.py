"""The one description of the pipeline: every stage's number, name, module, folders, tables,
label files and model, and the functions that derive paths from them.

Folder and file names are upstream's and are the compatibility contract with users' work
directories and label folders: they are written here once and derived everywhere else.
`{bak}` in a name stands for the background (black or white) of a per-background stage.

`python -m hbr.pipeline plan` prints the order in which `0_pipeline.sh` runs the stages.
This module imports nothing heavy: the driver and `-h` ask it before torch is loaded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

BACKGROUNDS = ("black", "white")

# stage kinds: what the stage does, and so which options its command line takes
DICOM, CLASSIFIER, BACKGROUND, SEGMENTER, MEASURE = "dicom", "classifier", "background", "segmenter", "measure"
MODEL_KINDS = (CLASSIFIER, SEGMENTER)


def other_background(bak: str) -> str:
    """The background that is not `bak` (black <-> white)."""
    return next(b for b in BACKGROUNDS if b != bak)


@dataclass(frozen=True)
class Stage:
    """One numbered stage as the user sees it: script, folders, tables, labels and model.

    Every name may hold `{bak}`; use the methods, which fill it in, rather than the fields.
    """

    number: int
    name: str  # script stem, log name, model name and the `excluded_by` value of hbr_table.tsv
    kind: str
    module: str  # the package module holding the stage's logic
    summary: str  # one line: what the stage does
    per_background: bool = False
    task: Optional[str] = None  # classifier stages: the short name used in config keys and the labelling tools
    input_prefix: Optional[str] = None  # image folders read: {prefix}_npy/ and {prefix}_png/
    output_prefix: Optional[str] = None  # image folders written (kept images, hard-linked)
    table: Optional[str] = None  # the table listing every image the stage saw
    labels: tuple[str, ...] = ()  # label file or folder names, ours first, then upstream's
    keep_label: Optional[int] = None  # classifier stages: the label of an image to keep
    meaning: tuple[str, str] = ("", "")  # classifier stages: what label 0 and label 1 mean
    question: str = ""  # classifier stages: the question whose "yes" is label 1

    @property
    def script(self) -> str:
        """The entry-point script at the top of the repository."""
        return f"{self.name}.py"

    @property
    def has_model(self) -> bool:
        return self.kind in MODEL_KINDS

    def run_name(self, bak: Optional[str] = None) -> str:
        """Name of one run of the stage: `name`, or `name_{bak}` for a per-background stage.

        It names the stage's model folder, log and resume state.
        """
        return f"{self.name}_{self._bak(bak)}" if self.per_background else self.name

    def input(self, bak: Optional[str] = None) -> str:
        """Prefix of the image folders the stage reads."""
        return self._fill(self.input_prefix, bak)

    def output(self, bak: Optional[str] = None) -> str:
        """Prefix of the image folders the stage writes."""
        return self._fill(self.output_prefix, bak)

    def table_name(self, bak: Optional[str] = None) -> str:
        """File name of the stage's table in the work directory."""
        return self._fill(self.table, bak)

    def label_names(self, bak: Optional[str] = None) -> list[str]:
        """Label file or folder names of the stage, ours first."""
        return [self._fill(name, bak) for name in self.labels]

    def _bak(self, bak: Optional[str]) -> str:
        if bak not in BACKGROUNDS:
            raise ValueError(f"stage {self.name}: give a background, one of {', '.join(BACKGROUNDS)}")
        return bak

    def _fill(self, text: Optional[str], bak: Optional[str]) -> str:
        if text is None:
            raise ValueError(f"stage {self.name} has no such folder or table")
        # stage 4 runs once but writes one folder pair per background
        return text.format(bak=self._bak(bak)) if "{bak}" in text else text


TOTAL_BODY = "1_Total_Body"  # stage 1's image folders: 1_Total_Body_npy/ and 1_Total_Body_png/
DCM_TABLE = "dcm_table.tsv"
ERRORS_TABLE = "1_errors.tsv"
SUMMARY_TABLE = "1_summary.tsv"
RESULT_DIR = "8_segment_result"
HBR_TABLE = "hbr_table.tsv"
SEGMENT_TABLE = "segment_table_{bak}.tsv"  # in RESULT_DIR
MASK_FOLDER = "7_segment_predicted_{landmark}_{bak}"
MODELS_DIR = "models"
LOGS_DIR = "logs"
STATE_DIR = ".state"
SHARDS_DIR = "shards"  # a sharded run's shards, each a work directory of its own
SHARD_MAP = "shard_map.tsv"  # a merged run: the shard of every source and image

STAGES: tuple[Stage, ...] = (
    Stage(1, "1_dcm2img", DICOM, "hbr.stages.dcm2img",
          "convert the Total Body DICOM images of zips, folders or files to npy and png",
          output_prefix=TOTAL_BODY, table=DCM_TABLE),
    Stage(2, "2_body_class", CLASSIFIER, "hbr.stages.classify",
          "keep whole-body bone images (remove tissue and other images)",
          task="body", input_prefix=TOTAL_BODY, output_prefix="2_class_predicted", table="2_class_pred.tsv",
          labels=("2_class_label.tsv",), keep_label=1,
          meaning=("not a whole-body bone image", "whole-body bone image"),
          question="Is this a whole-body bone (skeleton) image?"),
    Stage(3, "3_crop_class", CLASSIFIER, "hbr.stages.classify",
          "remove badly framed images (body cut off)",
          task="crop", input_prefix="2_class_predicted", output_prefix="3_crop_predicted", table="3_crop_pred.tsv",
          labels=("3_crop_label.tsv",), keep_label=0, meaning=("well framed", "badly framed or cut off"),
          question="Is the body cut off or badly framed?"),
    Stage(4, "4_background_class", BACKGROUND, "hbr.stages.background",
          "split images by background colour (no model); remove other backgrounds and oversize images",
          input_prefix="3_crop_predicted", output_prefix="4_bak_{bak}", table="4_background.tsv"),
    Stage(5, "5_contrast_class", CLASSIFIER, "hbr.stages.classify",
          "remove images of abnormal contrast, per background",
          per_background=True, task="contrast", input_prefix="4_bak_{bak}",
          output_prefix="5_contrast_{bak}_predicted", table="5_contrast_{bak}_pred.tsv",
          labels=("5_contrast_{bak}_label.tsv",), keep_label=0, meaning=("normal contrast", "abnormal contrast"),
          question="Is the contrast abnormal?"),
    Stage(6, "6_pose_class", CLASSIFIER, "hbr.stages.classify",
          "remove images with a non-standard head pose, per background",
          per_background=True, task="pose", input_prefix="5_contrast_{bak}_predicted",
          output_prefix="6_pose_{bak}_predicted", table="6_pose_{bak}_pred.tsv",
          labels=("6_pose_{bak}_label.tsv",), keep_label=0,
          meaning=("standard head pose", "non-standard head pose"),
          question="Is the head pose non-standard (tilted or turned)?"),
    Stage(7, "7_segment", SEGMENTER, "hbr.stages.segment",
          "U-Net masks of the head and six body landmarks, per background",
          per_background=True, input_prefix="6_pose_{bak}_predicted", table="7_segment_{bak}.tsv",
          labels=("7_segment_{bak}", "7_segment_masked_{bak}_direct/in")),
    Stage(8, "8_cal_segment", MEASURE, "hbr.stages.measure",
          "landmark boxes, centres and HBR phenotypes per background; the whole-run table and QC report",
          per_background=True, input_prefix="6_pose_{bak}_predicted", table=f"{RESULT_DIR}/{SEGMENT_TABLE}"),
)

BY_NUMBER = {s.number: s for s in STAGES}
BY_NAME = {s.name: s for s in STAGES}
CLASSIFIERS = {s.task: s for s in STAGES if s.kind == CLASSIFIER}  # task -> stage


def stage(key: int | str) -> Stage:
    """A stage by number, name (`5_contrast_class`) or classifier task (`contrast`)."""
    found = BY_NUMBER.get(key) if isinstance(key, int) else BY_NAME.get(key) or CLASSIFIERS.get(key)
    if found is None:
        valid = ", ".join(f"{s.number} ({s.name})" for s in STAGES)
        raise KeyError(f"unknown stage {key!r}; valid: {valid}")
    return found


def producer(consumer: Stage) -> Stage:
    """The stage that writes the image folders `consumer` reads."""
    return next(s for s in STAGES if s.output_prefix is not None and s.output_prefix == consumer.input_prefix)


def decision_stages() -> list[Stage]:
    """The QC stages whose tables decide which images go on (2-6), in chain order."""
    return [s for s in STAGES if s.kind in (CLASSIFIER, BACKGROUND)]


def image_folders(workdir: Path, prefix: str) -> tuple[Path, Path]:
    """The (npy, png) folder pair of a stage's images, e.g. prefix '2_class_predicted'."""
    return workdir / f"{prefix}_npy", workdir / f"{prefix}_png"


def total_body_npy(workdir: Path) -> Path:
    """Stage 1's npy folder: where labelled images are looked up by name."""
    return image_folders(workdir, TOTAL_BODY)[0]


def mask_folder(workdir: Path, landmark: str, bak: str) -> Path:
    """Where stage 7 writes the masks of one landmark and background."""
    return workdir / MASK_FOLDER.format(landmark=landmark, bak=bak)


def result_dir(workdir: Path) -> Path:
    """DIR/8_segment_result."""
    return workdir / RESULT_DIR


def segment_table_path(workdir: Path, bak: str) -> Path:
    """DIR/8_segment_result/segment_table_{bak}.tsv."""
    return result_dir(workdir) / SEGMENT_TABLE.format(bak=bak)


def run_order() -> Iterator[tuple[Stage, Optional[str]]]:
    """(stage, background) in the order the driver runs them: the shared stages, then the
    per-background ones for black, then for white."""
    shared = [s for s in STAGES if not s.per_background]
    per_bak = [s for s in STAGES if s.per_background]
    yield from ((s, None) for s in shared)
    for bak in BACKGROUNDS:
        yield from ((s, bak) for s in per_bak)


def run_tables() -> list[str]:
    """File names of every table a whole run writes, relative to the work directory, in the
    order the stages write them (hbr_table.tsv, rebuilt from these, is not among them)."""
    names = [DCM_TABLE, ERRORS_TABLE, SUMMARY_TABLE] + [s.table_name(bak) for s, bak in run_order()]
    return list(dict.fromkeys(names))  # stage 1's own table, DCM_TABLE, comes again from run_order


def plan_lines() -> list[str]:
    """The driver's plan, a line per run: number, run name, script, kind, background ('-' if none)."""
    return [f"{s.number}\t{s.run_name(bak)}\t{s.script}\t{s.kind}\t{bak or '-'}" for s, bak in run_order()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m hbr.pipeline plan`: the stage runs for 0_pipeline.sh; `stages`: a table for people."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["plan"]:
        print("\n".join(plan_lines()))
        return 0
    if args in ([], ["stages"]):
        for s in STAGES:
            bak = " {black|white}" if s.per_background else ""
            print(f"{s.number}  {s.script}{bak}: {s.summary}")
        return 0
    print("usage: python -m hbr.pipeline [stages|plan]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
