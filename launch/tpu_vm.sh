#!/usr/bin/env bash
# A Cloud TPU VM slice with gcloud: create it, install this repo on every worker, run a training job
# on all workers at once (one process per worker, jax.distributed from the TPU metadata), delete it.
#
#   launch/tpu_vm.sh [--dry-run] create   --name N --zone Z --type v5p-64 [--version V] [--project P] [--spot]
#   launch/tpu_vm.sh [--dry-run] setup    --name N --zone Z [--project P]       # copy HEAD, venv, pip install .[tpu]
#   launch/tpu_vm.sh [--dry-run] run      --name N --zone Z [--project P] -- --config configs/clip_b16.py --workdir DIR
#   launch/tpu_vm.sh [--dry-run] teardown --name N --zone Z [--project P]
#
# --dry-run prints every command (one per line, prefixed with '+ ') instead of running it.
# The workdir given to `run` must be a folder every worker sees (an NFS / Filestore or gcsfuse mount):
# all workers write their shards of each checkpoint there.
set -euo pipefail

DRY_RUN=0
REMOTE_DIR='~/vlmjax'
ARCHIVE=/tmp/vlmjax-src.tar.gz

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "launch/tpu_vm.sh: error: $*" >&2; exit 2; }

# Runs a command, or with --dry-run prints it shell-quoted.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# The TPU VM software version for an accelerator type.
default_version() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "unknown --type '$1' (v4-N, v5p-N, v5litepod-N, v6e-N); give --version" ;;
  esac
}

[[ ${1:-} == --dry-run ]] && { DRY_RUN=1; shift; }
COMMAND=${1:-}; [[ -n $COMMAND ]] || usage; shift
NAME='' ZONE='' TYPE='' VERSION='' PROJECT='' SPOT=0 TRAIN_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --name) NAME=${2:?--name needs a value}; shift ;;
    --zone) ZONE=${2:?--zone needs a value}; shift ;;
    --type) TYPE=${2:?--type needs a value}; shift ;;
    --version) VERSION=${2:?--version needs a value}; shift ;;
    --project) PROJECT=${2:?--project needs a value}; shift ;;
    --spot) SPOT=1 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
  shift
done
[[ -n $NAME ]] || die "--name is required"
[[ -n $ZONE ]] || die "--zone is required"
COMMON=(--zone="$ZONE")
[[ -n $PROJECT ]] && COMMON+=(--project="$PROJECT")

case "$COMMAND" in
  create)
    [[ -n $TYPE ]] || die "create needs --type (e.g. v5p-64)"
    [[ -n $VERSION ]] || VERSION=$(default_version "$TYPE")
    EXTRA=(); [[ $SPOT == 1 ]] && EXTRA+=(--spot)
    run gcloud compute tpus tpu-vm create "$NAME" "${COMMON[@]}" --accelerator-type="$TYPE" \
        --version="$VERSION" "${EXTRA[@]}"
    ;;
  setup)
    # The committed tree (HEAD), the same on every worker; libtpu comes with the `tpu` extra.
    run git archive --format=tar.gz --output="$ARCHIVE" HEAD
    run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$NAME":vlmjax-src.tar.gz "${COMMON[@]}" --worker=all
    run gcloud compute tpus tpu-vm ssh "$NAME" "${COMMON[@]}" --worker=all --command="mkdir -p $REMOTE_DIR && tar -xzf vlmjax-src.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install --quiet -e '.[tpu]'"
    ;;
  run)
    [[ ${#TRAIN_ARGS[@]} -gt 0 ]] || die "run needs the training arguments after '--' (--config ... --workdir ...)"
    QUOTED=$(printf ' %q' "${TRAIN_ARGS[@]}")
    # VLMJAX_DISTRIBUTED=auto: jax.distributed.initialize() finds the other workers itself.
    run gcloud compute tpus tpu-vm ssh "$NAME" "${COMMON[@]}" --worker=all --command="cd $REMOTE_DIR && VLMJAX_DISTRIBUTED=auto .venv/bin/python -m vlmjax.train$QUOTED"
    ;;
  teardown)
    run gcloud compute tpus tpu-vm delete "$NAME" "${COMMON[@]}" --quiet
    ;;
  *) die "unknown command '$COMMAND' (create, setup, run, teardown)" ;;
esac
