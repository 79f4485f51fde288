#!/usr/bin/env bash
# Runs a command on every worker of a fresh Cloud TPU VM (or pod slice), copies worker 0's
# results back and deletes the VM, also when a step fails. See docs/tpu.md.
#
#   scripts/tpu_run.sh [--dry-run] [--keep] NAME ZONE ACCELERATOR_TYPE COMMAND...
#   scripts/tpu_run.sh my-tpu us-central2-b v4-16 make bench
#   scripts/tpu_run.sh my-tpu us-central2-b v4-16 .venv/bin/jaxscale train --input streaming \
#       --dataset cifar10 --batch-size 1024 --output-dir runs/cifar10-streaming
#
# The training example streams: every worker writes the dataset's raw uint8 records into its
# own cache once (~/.cache/jaxscale/tfds/raw_records, or $JAXSCALE_CACHE_DIR set in COMMAND)
# and reads only its rows of every global batch; worker 0 writes the checkpoints.
# --dry-run prints every command (shell-quoted) and runs none; --keep leaves the VM up.
# The project is gcloud's default (gcloud config set project ID, or CLOUDSDK_CORE_PROJECT).
# TPU_RUNTIME_VERSION overrides the TPU software version chosen from the accelerator type.
set -euo pipefail

usage() {
    sed -n '5,8p' "$0" | sed 's/^# *//'
}

dry_run=0
keep=0
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in
        --dry-run) dry_run=1 ;;
        --keep) keep=1 ;;
        --help) usage; exit 0 ;;
        *) echo "tpu_run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [[ $# -lt 4 ]]; then
    echo "tpu_run.sh: need NAME ZONE ACCELERATOR_TYPE COMMAND..." >&2
    usage >&2
    exit 2
fi
name=$1
zone=$2
accelerator=$3
shift 3
command="$*"

# TPU software versions for JAX, from Google's "TPU software versions" table.
case $accelerator in
    v6e-*) runtime=v2-alpha-tpuv6e ;;
    v5p-*) runtime=v2-alpha-tpuv5 ;;
    v5litepod-*) runtime=v2-alpha-tpuv5-lite ;;
    v2-*|v3-*|v4-*) runtime=tpu-ubuntu2204-base ;;
    *) echo "tpu_run.sh: unknown accelerator type $accelerator" \
            "(v4-8, v5litepod-16, v5p-8, v6e-8...)" >&2
       exit 2 ;;
esac
runtime=${TPU_RUNTIME_VERSION:-$runtime}

repo=$(cd "$(dirname "$0")/.." && pwd)
tarball=${TMPDIR:-/tmp}/jaxscale-$name.tar.gz
results=$repo/runs/tpu/$name
# The pinned jax needs Python >= 3.11; Ubuntu 22.04 TPU images have 3.10, deadsnakes has 3.11.
# shellcheck disable=SC2016  # expanded on the TPU VM, not here
install='set -e
sudo apt-get -qq update
if python3 -c "import sys; sys.exit(sys.version_info < (3, 11))"; then py=python3
else sudo add-apt-repository -y ppa:deadsnakes/ppa; py=python3.11; fi
sudo apt-get -qq install -y make "$py-venv"
mkdir -p jaxscale && tar -xzf jaxscale.tar.gz -C jaxscale
cd jaxscale && make install JAX_EXTRA=tpu PYTHON="$py"'

run() {
    local arg line='+'
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then line+=" $arg"; else line+=" ${arg@Q}"; fi
    done
    echo "$line"
    if [[ $dry_run -eq 0 ]]; then
        "$@"
    fi
}

teardown() {
    if [[ $keep -eq 1 ]]; then
        echo "tpu_run.sh: --keep: $name is still running (and billing)" >&2
    else
        run gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet
    fi
}

run git -C "$repo" archive --format=tar.gz --output="$tarball" HEAD
run gcloud compute tpus tpu-vm create "$name" --zone="$zone" \
    --accelerator-type="$accelerator" --version="$runtime"
trap teardown EXIT
run gcloud compute tpus tpu-vm scp "$tarball" "$name:jaxscale.tar.gz" --zone="$zone" --worker=all
run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$install"
run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
    --command="cd jaxscale && export JAX_EXTRA=tpu && $command"
run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=0 --command="\
cd jaxscale && tar -czf ../results.tar.gz \$(ls -d benchmarks/results runs 2>/dev/null)"
run mkdir -p "$results"
run gcloud compute tpus tpu-vm scp "$name:results.tar.gz" "$results/" --zone="$zone" --worker=0
run tar -xzf "$results/results.tar.gz" -C "$results"
if [[ $dry_run -eq 0 ]]; then echo "tpu_run.sh: results of worker 0 in $results" >&2; fi
