"""The tiny phantom run every end-to-end test shares (tests/test_pipeline.py, tests/slurm):
the demo set's size and the --set overrides that make its models tiny CPU models (ResNet18
classifiers at 80x40, a U-Net(ResNet18) at 64x32, fp32, one thread each), on top of
configs/demo.yaml, so the checks hold for any demo.yaml."""

from pathlib import Path

from hbr.pipeline import HBR_TABLE, RESULT_DIR, run_tables

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"

# The smallest demo set (the driver's --demo uses seed 0) whose every label file has both
# classes and at least MIN_LABELS images, LabelMe files of both backgrounds included.
N_PARTICIPANTS = 26
MIN_LABELS = 4
CHUNK = 2  # prediction chunk size: many resumable chunks even with few images

TINY = [
    "runtime.cpu_bf16=false",  # bf16 autocast is several times slower than fp32 at this size
    "runtime.threads=1",  # runs share the cores; a fixed thread count also fixes the arithmetic
    "dicom.workers=0",
    "classifier.arch=resnet18",
    "classifier.input_height=80",  # at 64x32 the QC classes are too alike to learn in seconds
    "classifier.input_width=40",
    "classifier.train.epochs=20",  # balanced batches of 2 positives: 7 epochs learn stage 2, not stage 5
    "classifier.train.min_steps=0",  # the tiny set trains for exactly the epochs above
    "classifier.train.batch_size=8",
    f"classifier.train.min_images={MIN_LABELS}",
    "classifier.train.workers=0",
    "classifier.folds=0",  # out-of-fold thresholds of models this tiny are noise (folds: tests/test_classify.py)
    "segmenter.encoder=resnet18",
    "segmenter.input_height=64",
    "segmenter.input_width=32",
    "segmenter.point_radius=2",
    "segmenter.train.epochs=2",
    "segmenter.train.batch_size=4",
    f"segmenter.train.min_images={MIN_LABELS}",
    "segmenter.train.workers=0",
    "segmenter.train.time_limit_min=0",  # a time limit would make the best epoch depend on load
    "predict.batch_size=2",  # = the chunk size: a short batch is padded to the batch size
    "predict.segmenter_batch_size=3",  # stage 7 runs several batches in both lanes
    "predict.workers=0",
    f"predict.chunk_size={CHUNK}",
]
SETS = [arg for setting in TINY for arg in ("--set", setting)]

# A whole run's tables, relative to its work directory: two runs on the same zips with the
# same models write them byte for byte alike
STAGE_TABLES = run_tables() + [f"{RESULT_DIR}/{HBR_TABLE}"]
