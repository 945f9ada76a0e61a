#!/usr/bin/env bash
# Runs stages 1-8 in order (5-8 for black and white backgrounds), one after the other,
# stopping at the first failure. The stages, their scripts and their order come from the
# package's stage registry (hbr/pipeline.py). Each stage's output goes to the terminal and
# to WORKDIR/logs/<stage>.log. A re-run resumes: finished work is reused.
# With --shard I/N it runs one shard of the input in WORKDIR/shards/I_of_N (a cluster job
# each, see slurm/), and --merge combines the finished shards (hbr/shards.py).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m hbr.… from any folder
# the stages' output is piped to tee: unbuffered, so a log keeps the order in which lines came
# (progress lines go to stderr, the rest to stdout)
export PYTHONUNBUFFERED=1

usage() {
  cat <<EOF
Usage: 0_pipeline.sh --input ZIPS [options]
       0_pipeline.sh --demo [options]

Runs the whole hbr pipeline: DICOM zips -> QC -> landmarks -> HBR phenotypes.

  --input PATH     folder of DICOM zips (also a zip, a folder of .dcm, or a .dcm)
  --workdir DIR    work directory (default: ./work)
  --labels DIR     folder of label files (default: $REPO/labels)
  --config FILE    YAML config (default: configs/default.yaml; configs/demo.yaml with --demo)
  --models DIR     predict with trained models (e.g. an earlier WORKDIR/models); no labels needed
  --device DEV     auto, cpu, cuda or cuda:N (default: auto)
  --demo           generate the phantom data set into WORKDIR/phantom, train every model, run all
                   stages and print the accuracy against the phantom's ground truth
  --demo-size N    participants in the demo phantom set (default: 120)
  --from N         start at stage N (1-8); earlier stages' outputs must exist
  --set KEY=VALUE  config override, repeatable (e.g. --set classifier.train.epochs=5)
  --shard I/N      run shard I of N (0-based) of the input in WORKDIR/shards/I_of_N (needs --models);
                   N alone takes I from SLURM_ARRAY_TASK_ID (a job-array task)
  --merge          merge the finished shards of WORKDIR into its tables, hbr_table.tsv and report
  --version        print the version
  -h, --help       show this help
EOF
}

# value OPTION "$@": the value after OPTION, or a usage error when there is none
value() {
  if [ $# -lt 2 ] || [ -z "$2" ] || [ "${2#--}" != "$2" ]; then
    echo "0_pipeline: $1 needs a value (see -h)" >&2; exit 2
  fi
  printf '%s' "$2"
}

INPUT="" WORKDIR="work" LABELS="" CONFIG="" MODELS="" DEVICE="auto" DEMO=0 DEMO_N=120 FROM=1 VERSION=0
SHARD="" MERGE=0
SETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --input) INPUT="$(value "$@")"; shift 2 ;;
    --workdir) WORKDIR="$(value "$@")"; shift 2 ;;
    --labels) LABELS="$(value "$@")"; shift 2 ;;
    --config) CONFIG="$(value "$@")"; shift 2 ;;
    --models) MODELS="$(value "$@")"; shift 2 ;;
    --device) DEVICE="$(value "$@")"; shift 2 ;;
    --demo) DEMO=1; shift ;;
    --demo-size) DEMO_N="$(value "$@")"; shift 2 ;;
    --from) FROM="$(value "$@")"; shift 2 ;;
    --set) SETS+=(--set "$(value "$@")"); shift 2 ;;
    --shard) SHARD="$(value "$@")"; shift 2 ;;
    --merge) MERGE=1; shift ;;
    --version) VERSION=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "0_pipeline: unknown option $1 (see -h)" >&2; exit 2 ;;
  esac
done

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"
else PY="python3"; fi

if [ "$VERSION" = 1 ]; then exec "$PY" -c "import hbr; print('hbr', hbr.__version__)"; fi
if [ "$MERGE" = 1 ]; then
  [ -n "$SHARD$INPUT" ] || [ "$DEMO" = 1 ] && { echo "0_pipeline: --merge takes only --workdir (the run's)" >&2; exit 2; }
  [ -d "$WORKDIR" ] || { echo "0_pipeline: --workdir $WORKDIR: no such folder" >&2; exit 2; }
  mkdir -p "$WORKDIR/logs"
  echo "== merging the shards of $WORKDIR"
  "$PY" -m hbr.shards merge --workdir "$WORKDIR" 2>&1 | tee "$WORKDIR/logs/merge.log"
  exit "${PIPESTATUS[0]}"
fi
case "$FROM" in [1-8]) ;; *) echo "0_pipeline: --from must be 1-8, got '$FROM'" >&2; exit 2 ;; esac
if [ "$DEMO" = 0 ] && [ "$FROM" = 1 ] && [ -z "$INPUT" ]; then
  echo "0_pipeline: --input is required (or --demo); see -h" >&2; exit 2
fi
SHARD_DIR=""
if [ -n "$SHARD" ]; then
  if [ "$DEMO" = 1 ] || [ -z "$MODELS" ]; then
    echo "0_pipeline: --shard needs --models DIR (train once on a sample, then predict every shard) and no --demo" >&2
    exit 2
  fi
  RESOLVED="$("$PY" -m hbr.shards resolve "$SHARD" 2>&1)" || { echo "0_pipeline: $RESOLVED" >&2; exit 2; }
  SHARD="${RESOLVED%%$'\t'*}" SHARD_DIR="${RESOLVED#*$'\t'}"
fi
PLAN="$("$PY" -m hbr.pipeline plan)" || { echo "0_pipeline: cannot read the stage list from the hbr package ($PY)" >&2; exit 1; }
mkdir -p "$WORKDIR/logs"
WORKDIR="$(cd "$WORKDIR" && pwd)"
LOGS="$WORKDIR/logs"
if [ -n "$SHARD" ]; then LOGS="$WORKDIR/$SHARD_DIR/logs"; mkdir -p "$LOGS"; fi

if [ "$DEMO" = 1 ]; then
  CONFIG="${CONFIG:-$REPO/configs/demo.yaml}"
  PHANTOM="$WORKDIR/phantom"
  if [ ! -f "$PHANTOM/ground_truth.tsv" ]; then
    echo "== demo: generating $DEMO_N phantom participants into $PHANTOM"
    "$PY" -m hbr.phantom --out "$PHANTOM" --n "$DEMO_N" --seed 0 2>&1 | tee "$WORKDIR/logs/0_phantom.log"
  fi
  INPUT="${INPUT:-$PHANTOM/zips}"
  LABELS="${LABELS:-$PHANTOM/labels}"
fi
CONFIG="${CONFIG:-$REPO/configs/default.yaml}"
LABELS="${LABELS:-$REPO/labels}"

COMMON=(--workdir "$WORKDIR" --config "$CONFIG" --device "$DEVICE" ${SETS[@]+"${SETS[@]}"})
[ -n "$SHARD" ] && COMMON+=(--shard "$SHARD")
if [ -n "$MODELS" ]; then MODEL_OPTS=(--models "$MODELS"); else MODEL_OPTS=(--labels "$LABELS"); fi

# run_stage NUMBER LOGNAME SCRIPT ARGS...: runs one stage, logs it, stops the pipeline on failure.
run_stage() {
  local number="$1" name="$2" script="$3"; shift 3
  [ "$number" -lt "$FROM" ] && return 0
  local log="$LOGS/$name.log"
  echo "== stage $number: $script $*"
  local start=$SECONDS
  if ! "$PY" "$REPO/$script" "$@" "${COMMON[@]}" 2>&1 | tee "$log"; then
    echo "0_pipeline: stage $number ($name) failed; log: $log; reason: $(grep -v '^\s*$' "$log" | tail -n 1)" >&2
    exit 1
  fi
  echo "== stage $number done in $((SECONDS - start)) s (log: $log)"
}

# one line per stage run: number, log name, script, kind, background ('-' for none)
while IFS=$'\t' read -r NUMBER NAME SCRIPT KIND BAK <&3; do
  ARGS=()
  [ "$BAK" != "-" ] && ARGS+=("$BAK")
  case "$KIND" in
    dicom) ARGS+=(--input "$INPUT") ;;
    classifier|segmenter) ARGS+=("${MODEL_OPTS[@]}") ;;
  esac
  run_stage "$NUMBER" "$NAME" "$SCRIPT" ${ARGS[@]+"${ARGS[@]}"}
done 3<<< "$PLAN"

if [ "$DEMO" = 1 ]; then
  echo "== demo accuracy on the held-out phantom images (models trained on the 'train' split):"
  "$PY" -m hbr.evaluate --workdir "$WORKDIR" --truth "$WORKDIR/phantom/ground_truth.tsv" 2>&1 \
    | tee "$WORKDIR/logs/9_demo_accuracy.log"
fi
if [ -n "$SHARD" ]; then
  echo "== shard $SHARD done: $WORKDIR/$SHARD_DIR; when every shard is, merge: 0_pipeline.sh --merge --workdir $WORKDIR"
else
  echo "== results: $WORKDIR/8_segment_result/hbr_table.tsv (one row per image)"
  echo "== report:  $WORKDIR/8_segment_result/report/index.html"
fi
echo "== finished in $((SECONDS / 60)) min $((SECONDS % 60)) s"
