#!/usr/bin/env bash
# Prepare what tests/test_docker.py's container tests need: podman that can run containers on this
# machine, and a local `python:3.11-slim` (no container registry is reachable, so
# .ci/make-base-image.sh beside this file, or the script named by $PREFETCH_BASE_IMAGE_SCRIPT, builds
# a Debian bookworm stand-in with that tag).
#
# Idempotent (a second run takes seconds). When something cannot be had, it says why, writes the
# reason to $TMPDIR/prefetch-container-setup.status and exits 0: the container tests then quote it,
# skipping on a developer's machine and FAILING under CI=true, so CI never goes green without them.
# Needs root (apt-get, /etc/containers). .ci/run calls it when CI=true; by hand:
#   bash .ci/container-setup.sh
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
base_image_script=${PREFETCH_BASE_IMAGE_SCRIPT:-$repo/.ci/make-base-image.sh}
base=python:3.11-slim
status=${TMPDIR:-/tmp}/prefetch-container-setup.status
conf=/etc/containers/containers.conf
marker="# written by prefetch .ci/container-setup.sh"
probe_image=localhost/prefetch-setup-probe:latest
started=$(date +%s)
export DEBIAN_FRONTEND=noninteractive

say() { echo "container-setup: $*"; }
elapsed() { echo "$(($(date +%s) - started))s"; }
give_up() {
  say "$1 ($(elapsed)); the container tests will fail under CI=true (elsewhere they are skipped)"
  printf '%s\n' "$1" >"$status"
  exit 0
}
have() { command -v "$1" >/dev/null 2>&1; }

rm -f "$status"

# --- 1. packages ------------------------------------------------------------------------------------
missing=()
for tool in podman runc debootstrap; do have "$tool" || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || give_up "podman, runc or debootstrap missing and not root: cannot apt-get install ${missing[*]}"
  have apt-get || give_up "no apt-get: install podman, runc and debootstrap by hand"
  say "installing ${missing[*]} (and what they need) from Debian's packages"
  timeout 600 apt-get update -qq >/dev/null || give_up "apt-get update failed"
  timeout 1200 apt-get install -y -qq podman runc debootstrap >/dev/null ||
    give_up "apt-get install podman runc debootstrap failed"
fi
say "$(podman --version)"

# --- 2. podman must be able to run a container here ---------------------------------------------------
# A throwaway image made of the host's /bin/true and its libraries: no registry, no base image needed.
make_probe_image() {
  podman image exists "$probe_image" && return 0
  local files
  files=$(ldd /bin/true 2>/dev/null | grep -o '/[^ ]*' | sort -u | tr '\n' ' ')
  # shellcheck disable=SC2086  # word splitting of the file list is intended
  tar -chf - /bin/true $files 2>/dev/null | podman import - "$probe_image" >/dev/null 2>&1
}
probe() { timeout 120 podman run --rm --network none "$probe_image" /bin/true >/dev/null 2>"$1"; }

make_probe_image || give_up "podman import failed: podman does not work here"
errors=$(mktemp)
if probe "$errors"; then
  say "podman runs containers with its current configuration"
else
  # Seen on hybrid cgroup v1/v2 hosts without CAP_SYS_RESOURCE: crun refuses hybrid cgroups, and the
  # default rlimits (nofile/nproc 1048576) are above this process's hard limits. Use runc and limits
  # the host allows; try a few and keep the first that works.
  say "podman cannot run a container as configured: $(tail -c 300 "$errors")"
  if [ -f "$conf" ] && ! grep -qF "$marker" "$conf"; then
    give_up "podman cannot run containers ($(tail -c 200 "$errors")) and $conf is not ours to change"
  fi
  nofile=$(ulimit -Hn)
  [ "$nofile" = unlimited ] && nofile=1048576
  candidate=$(mktemp)
  ok=""
  for runtime in runc crun; do
    have "$runtime" || continue
    for nproc in 32768 4096 1024; do
      cat >"$candidate" <<EOF
$marker: podman's defaults cannot start a container on this host
# (hybrid cgroups and/or rlimits above the hard limits). Delete this file to undo.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "$runtime"
EOF
      if CONTAINERS_CONF=$candidate probe "$errors"; then ok="$runtime nofile=$nofile nproc=$nproc"; break 2; fi
    done
  done
  [ -n "$ok" ] || give_up "podman cannot run containers here, whatever the runtime and rlimits: $(tail -c 300 "$errors")"
  mkdir -p "$(dirname "$conf")"
  cp "$candidate" "$conf"
  say "wrote $conf ($ok)"
  rm -f "$candidate"
fi
rm -f "$errors"

# --- 3. the base image ------------------------------------------------------------------------------
if podman image exists "$base"; then
  say "$base already present"
else
  [ -f "$base_image_script" ] || give_up "no $base image and no $base_image_script to build one (PREFETCH_BASE_IMAGE_SCRIPT)"
  say "building $base with $base_image_script (a few minutes)"
  log=$(mktemp)
  if ! timeout 1500 bash "$base_image_script" "$base" >"$log" 2>&1; then
    give_up "make-base-image.sh failed: $(tail -n 5 "$log" | tr '\n' ' ' | tail -c 400)"
  fi
  tail -n 2 "$log"
  rm -f "$log"
fi
out=$(timeout 120 podman run --rm --network none "$base" python -c 'import sys; print(sys.version.split()[0])' 2>&1) ||
  give_up "$base does not run python: $out"
say "$base runs Python $out; ready in $(elapsed)"
