#!/usr/bin/env bash
# Submit an hbr run to SLURM: a job array with one task per shard of the input (about
# --zips-per-task zips each), and the merge, which starts when every task has succeeded.
# Models are trained once beforehand (on a sample work directory); the tasks predict with
# them. See the README, "Running on a cluster".
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<USAGE
Usage: slurm/submit.sh --input ZIPS --workdir DIR --models DIR [options]

Submits one SLURM array task per shard of ZIPS (each runs 0_pipeline.sh --shard), then the
merge into DIR with --dependency=afterok. Prints the job ids and the commands it ran.

  --input PATH          folder of DICOM zips (on a file system every node sees)
  --workdir DIR         the run's work directory (shared); shards go to DIR/shards/
  --models DIR          trained models (e.g. the models/ of the sample work directory)
  --zips-per-task N     zips per array task (default: 500); N tasks = ceil(zips / N)
  --shards N            the number of tasks instead (overrides --zips-per-task)
  --config FILE         YAML config (default: configs/default.yaml)
  --set KEY=VALUE       config override, repeatable
  --device DEV          auto, cpu, cuda or cuda:N (default: auto)
  --partition NAME      partition of the tasks and the merge
  --time T              time limit per task (sbatch --time, e.g. 4:00:00)
  --mem M               memory per task (sbatch --mem, e.g. 16G)
  --cpus N              CPUs per task (sbatch --cpus-per-task)
  --gres SPEC           generic resources per task, e.g. gpu:1 for a GPU each
  --max-running K       at most K tasks at once (sbatch --array=...%K)
  --sbatch OPTION       any further sbatch option for the tasks and the merge, repeatable
                        (e.g. --sbatch --account=myproject)
  --dry-run             print the sbatch commands instead of running them
  -h, --help            show this help
USAGE
}

value() {
  if [ $# -lt 2 ] || [ -z "$2" ]; then echo "submit: $1 needs a value (see -h)" >&2; exit 2; fi
  printf '%s' "$2"
}

INPUT="" WORKDIR="" MODELS="" PER_TASK=500 SHARDS="" CONFIG="" DEVICE="auto" DRY=0
PARTITION="" TIME="" MEM="" CPUS="" GRES="" MAX_RUNNING=""
SETS=() EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --input) INPUT="$(value "$@")"; shift 2 ;;
    --workdir) WORKDIR="$(value "$@")"; shift 2 ;;
    --models) MODELS="$(value "$@")"; shift 2 ;;
    --zips-per-task) PER_TASK="$(value "$@")"; shift 2 ;;
    --shards) SHARDS="$(value "$@")"; shift 2 ;;
    --config) CONFIG="$(value "$@")"; shift 2 ;;
    --set) SETS+=(--set "$(value "$@")"); shift 2 ;;
    --device) DEVICE="$(value "$@")"; shift 2 ;;
    --partition) PARTITION="$(value "$@")"; shift 2 ;;
    --time) TIME="$(value "$@")"; shift 2 ;;
    --mem) MEM="$(value "$@")"; shift 2 ;;
    --cpus) CPUS="$(value "$@")"; shift 2 ;;
    --gres) GRES="$(value "$@")"; shift 2 ;;
    --max-running) MAX_RUNNING="$(value "$@")"; shift 2 ;;
    --sbatch) EXTRA+=("$(value "$@")"); shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "submit: unknown option $1 (see -h)" >&2; exit 2 ;;
  esac
done
for required in INPUT WORKDIR MODELS; do
  if [ -z "${!required}" ]; then echo "submit: --${required,,} is required (see -h)" >&2; exit 2; fi
done
[ -e "$INPUT" ] || { echo "submit: --input $INPUT: no such file or folder" >&2; exit 2; }
[ -d "$MODELS" ] || { echo "submit: --models $MODELS: no such folder" >&2; exit 2; }
positive() { case "$2" in ''|*[!0-9]*|0) echo "submit: $1 must be a whole number above 0, got '$2'" >&2; exit 2 ;; esac; }
positive --zips-per-task "$PER_TASK"
[ -z "$MAX_RUNNING" ] || positive --max-running "$MAX_RUNNING"

# every path absolute: the tasks start in another folder, on other nodes
INPUT="$(realpath -m "$INPUT")" MODELS="$(realpath -m "$MODELS")" WORKDIR="$(realpath -m "$WORKDIR")"
[ -z "$CONFIG" ] || CONFIG="$(realpath -m "$CONFIG")"

if [ -z "$SHARDS" ]; then
  ZIPS="$(find "$INPUT" -iname '*.zip' -type f | wc -l)"
  SHARDS=$(( (ZIPS + PER_TASK - 1) / PER_TASK ))
  [ "$SHARDS" -ge 1 ] || SHARDS=1
  echo "submit: $ZIPS zips in $INPUT: $SHARDS tasks of up to $PER_TASK zips"
fi
positive --shards "$SHARDS"

RESOURCES=(${PARTITION:+--partition="$PARTITION"} ${EXTRA[@]+"${EXTRA[@]}"})
TASK_RESOURCES=("${RESOURCES[@]}" ${TIME:+--time="$TIME"} ${MEM:+--mem="$MEM"} ${CPUS:+--cpus-per-task="$CPUS"}
                ${GRES:+--gres="$GRES"})
PIPELINE=(--input "$INPUT" --workdir "$WORKDIR" --models "$MODELS" --device "$DEVICE" --shard "$SHARDS"
          ${CONFIG:+--config "$CONFIG"} ${SETS[@]+"${SETS[@]}"})
ARRAY="0-$((SHARDS - 1))${MAX_RUNNING:+%$MAX_RUNNING}"
TASKS=(sbatch --parsable --job-name=hbr-shard --array="$ARRAY" --output="$WORKDIR/logs/slurm-%A_%a.out"
       "${TASK_RESOURCES[@]}" "$REPO/slurm/shard.sbatch" "$REPO" "${PIPELINE[@]}")
MERGE_OPTIONS=(--parsable --job-name=hbr-merge --output="$WORKDIR/logs/slurm-merge-%j.out" "${RESOURCES[@]}")

if [ "$DRY" = 1 ]; then
  printf '%q ' "${TASKS[@]}"; echo
  printf '%q ' sbatch --dependency=afterok:ARRAY_JOB_ID "${MERGE_OPTIONS[@]:1}" "$REPO/slurm/merge.sbatch" "$REPO" "$WORKDIR"
  echo
  exit 0
fi
mkdir -p "$WORKDIR/logs"
ARRAY_JOB="$("${TASKS[@]}")"
ARRAY_JOB="${ARRAY_JOB%%;*}"  # --parsable: "jobid[;cluster]"
MERGE_JOB="$(sbatch --dependency=afterok:"$ARRAY_JOB" "${MERGE_OPTIONS[@]}" "$REPO/slurm/merge.sbatch" "$REPO" "$WORKDIR")"
MERGE_JOB="${MERGE_JOB%%;*}"

# the commands for later: re-submitting one task, and the merge after it
RESUBMIT=(sbatch --array=I --job-name=hbr-shard --output="$WORKDIR/logs/slurm-%A_%a.out" "${TASK_RESOURCES[@]}"
          "$REPO/slurm/shard.sbatch" "$REPO" "${PIPELINE[@]}")
{
  echo "array job $ARRAY_JOB ($SHARDS tasks), merge job $MERGE_JOB (starts when every task has succeeded)"
  echo "if a task fails: re-submit it alone (it resumes), with its number for I:"
  printf ' %q' "${RESUBMIT[@]}"; echo
  echo "then, when it has finished, cancel the merge job that waits for the failed task and merge:"
  printf ' %q' scancel "$MERGE_JOB"; printf '; '; printf ' %q' bash "$REPO/0_pipeline.sh" --merge --workdir "$WORKDIR"
  echo
} | tee "$WORKDIR/logs/slurm_submit.txt"
echo "logs: $WORKDIR/logs/slurm-${ARRAY_JOB}_*.out; results after the merge: $WORKDIR/8_segment_result/hbr_table.tsv"
