#!/usr/bin/env bash
# Build a local stand-in for the `python:3.11-slim` base image, for container builds on machines
# that reach Debian's package archive and PyPI but no container registry.
# It is a minimal Debian bookworm (Python 3.11) with `python`/`pip` on PATH and this machine's CA
# bundle (so pip inside a build trusts the same certificates as the host). Tags it for podman and,
# when a Docker daemon answers, for docker too. Takes a few minutes; safe to run again.
#
#   usage: make-base-image.sh [TAG]        (default TAG: python:3.11-slim)
# Copied into the project from the shared tools of the team's workspace (tools/make-base-image.sh,
# unchanged) so that .ci/container-setup.sh works from any checkout.
set -euo pipefail
tag=${1:-python:3.11-slim}
work=${BASE_IMAGE_WORK:-/tmp/base-image}
export DEBIAN_FRONTEND=noninteractive

need() { command -v "$1" >/dev/null 2>&1; }
if ! need debootstrap || ! need podman; then
  apt-get update -qq && apt-get install -y -qq debootstrap podman >/dev/null
fi
# The Debian mirror this machine already uses.
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)

mkdir -p "$work"
if [ ! -x "$work/rootfs/usr/bin/python3" ]; then
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1
fi
tar -C "$work/rootfs" -c . | podman import --change 'CMD ["python3"]' - localhost/debian-python:bookworm >/dev/null

cp /etc/ssl/certs/ca-certificates.crt "$work/ca-certificates.crt"
cat >"$work/Containerfile" <<'EOC'
FROM localhost/debian-python:bookworm
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN ln -sf /usr/bin/python3 /usr/local/bin/python && ln -sf /usr/bin/pip3 /usr/local/bin/pip
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 LANG=C.UTF-8
CMD ["python3"]
EOC
podman build -q --network host -t "$tag" "$work" >/dev/null
echo "podman: $(podman image inspect --format '{{.Id}}' "$tag" | cut -c1-12) tagged $tag"
if need docker && docker info >/dev/null 2>&1; then
  podman save "$tag" | docker load >/dev/null && docker tag "localhost/$tag" "$tag" 2>/dev/null || true
  echo "docker: $(docker image inspect --format '{{.Id}}' "$tag" | cut -c8-19) tagged $tag"
fi
