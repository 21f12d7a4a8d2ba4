#!/usr/bin/env bash
# Submit an octbatch job to Slurm: an array of N slices (`octbatch run --slice i/N`) and a merge
# job that runs after all of them (--dependency=afterany). Safe to run from cron or scrontab
# every night: reruns classify only new or changed scans, and --dependency=singleton keeps two
# submissions for the same output from overlapping (the next one waits for the last to end).
#
# usage: submit.sh [options] ARCHIVE OUT
#   -n, --tasks N           slices = array tasks [8]
#   -g, --gpus-per-task G   GPUs per task, as --gres=gpu:G [1]; 0 for CPU-only partitions
#   -c, --cpus-per-task C   CPUs per task [8]
#   -t, --time T            time limit per task [04:00:00]
#   -p, --partition P       partition [the cluster's default]
#   -A, --account A         account to charge [yours by default]
#   -m, --model PATH        ONNX model [$OCTBATCH_MODEL, else the shipped model]
#   -l, --logs DIR          job logs [OUT's folder/logs]
#   --octbatch PATH         octbatch executable the jobs run [the one on PATH now]
#   -- ARGS                 more sbatch options, given to both jobs
# Prints the array job id and the merge job id on stdout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tasks=8 gpus=1 cpus=8 time_limit=04:00:00 partition='' account='' model=${OCTBATCH_MODEL:-} logs='' octbatch=''
extra=()
die() { echo "submit.sh: $*" >&2; exit 1; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case $1 in
        -n|--tasks) need "$@"; tasks=$2; shift 2 ;;
        -g|--gpus-per-task) need "$@"; gpus=$2; shift 2 ;;
        -c|--cpus-per-task) need "$@"; cpus=$2; shift 2 ;;
        -t|--time) need "$@"; time_limit=$2; shift 2 ;;
        -p|--partition) need "$@"; partition=$2; shift 2 ;;
        -A|--account) need "$@"; account=$2; shift 2 ;;
        -m|--model) need "$@"; model=$2; shift 2 ;;
        -l|--logs) need "$@"; logs=$2; shift 2 ;;
        --octbatch) need "$@"; octbatch=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; extra=("$@"); set --; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
[ $# -eq 2 ] || die "give ARCHIVE and OUT (see --help)"
[[ $tasks =~ ^[1-9][0-9]*$ ]] || die "--tasks must be a positive number"
[[ $gpus =~ ^[0-9]+$ ]] || die "--gpus-per-task must be a whole number (0 for CPU nodes)"
[ -d "$1" ] || die "archive $1 is not a folder"
archive=$(cd "$1" && pwd)
out_dir=$(dirname "$2")
[ -d "$out_dir" ] || die "the folder of $2 does not exist: create it on a file system every node sees"
out=$(cd "$out_dir" && pwd)/$(basename "$2")
logs=${logs:-$(dirname "$out")/logs}
mkdir -p "$logs"
if [ -z "$octbatch" ]; then
    octbatch=$(command -v octbatch) || die "octbatch is not on PATH: activate its environment or pass --octbatch"
fi
if [ -n "$model" ]; then
    model=$(cd "$(dirname "$model")" && pwd)/$(basename "$model")
fi
for v in "$archive" "$out" "$octbatch" "$model"; do
    case $v in *,*) die "a path with a comma cannot be passed through sbatch --export: $v" ;; esac
done

# One name per output: --dependency=singleton serialises jobs of the same name and user.
name="octbatch-$(printf '%s' "$out" | cksum | cut -d' ' -f1)"
common=(--parsable --job-name="$name" --time="$time_limit"
        --export="ALL,OCTBATCH_ARCHIVE=$archive,OCTBATCH_OUT=$out,OCTBATCH_BIN=$octbatch${model:+,OCTBATCH_MODEL=$model}")
[ -n "$partition" ] && common+=(--partition="$partition")
[ -n "$account" ] && common+=(--account="$account")
gres=()
[ "$gpus" -gt 0 ] && gres=(--gres="gpu:$gpus")

array_id=$(sbatch "${common[@]}" "${gres[@]}" --array="0-$((tasks - 1))" --cpus-per-task="$cpus" \
    --dependency=singleton --output="$logs/%x-%A_%a.out" "${extra[@]}" "$here/octbatch-array.sbatch")
array_id=${array_id%%;*}
merge_id=$(sbatch "${common[@]}" --cpus-per-task=1 --dependency="afterany:$array_id" \
    --output="$logs/%x-merge-%j.out" "${extra[@]}" "$here/octbatch-merge.sbatch")
merge_id=${merge_id%%;*}
echo "submit.sh: array job $array_id ($tasks slices, $gpus GPU(s) each), merge job $merge_id; logs in $logs" >&2
echo "$array_id $merge_id"
