#!/usr/bin/env bash
# Build local stand-ins for the base images docker/Dockerfile names by default, for machines that
# cannot pull from any registry (CI, sandboxes). The real Dockerfile then builds unchanged.
#
#   docker/make-local-base.sh [python|torch|all]      (default: all)
#
#   python -> docker.io/library/python:3.11-slim-bookworm     (docker/Dockerfile, families without torch)
#             Debian bookworm minbase + python3/pip/venv, made with mmdebstrap from Debian packages.
#   torch  -> docker.io/pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime  (docker/Dockerfile, families that require torch)
#             the python image + the CPU torch wheel that pip finds on this host (pip config
#             find-links), installed offline. It has no CUDA: it only stands in for the name.
#
# Env: DOCKER (podman|docker, default: podman if present), FORCE=1 rebuilds images that exist,
#      TORCH_VERSION (2.13.0), PYTHON_IMAGE / TORCH_IMAGE (tags to create), APT_SOURCES (a deb822
#      or one-line sources file; default: this host's), PIP (the pip that downloads the torch wheel).
# Host needs: mmdebstrap (apt-get install mmdebstrap), the engine, root (or fakeroot-capable mmdebstrap).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
WHAT=${1:-all}
DOCKER=${DOCKER:-$(command -v podman >/dev/null && echo podman || echo docker)}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PYTHON_IMAGE=${PYTHON_IMAGE:-docker.io/library/python:3.11-slim-bookworm}
TORCH_IMAGE=${TORCH_IMAGE:-docker.io/pytorch/pytorch:${TORCH_VERSION}-cuda12.8-cudnn9-runtime}
PIP=${PIP:-$( [ -x "$ROOT/.venv/bin/pip" ] && echo "$ROOT/.venv/bin/pip" || echo "python3 -m pip")}
if [ -z "${APT_SOURCES:-}" ]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -s "$f" ] && { APT_SOURCES=$f; break; }
  done
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/textclf-base.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
say() { echo "make-local-base: $*" >&2; }

build_python() {
  if have "$PYTHON_IMAGE" && [ -z "${FORCE:-}" ]; then say "$PYTHON_IMAGE exists (FORCE=1 rebuilds)"; return; fi
  command -v mmdebstrap >/dev/null || { say "mmdebstrap missing: apt-get install mmdebstrap"; exit 1; }
  local t=$SECONDS
  # The host's extra CA certificates go in, so pip inside builds works behind TLS-intercepting proxies.
  mmdebstrap -q --variant=minbase --include=ca-certificates,python3,python3-pip,python3-venv \
    --customize-hook='mkdir -p "$1"/usr/local/share/ca-certificates; cp /usr/local/share/ca-certificates/*.crt "$1"/usr/local/share/ca-certificates/ 2>/dev/null || true' \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='ln -sf /usr/bin/python3 "$1"/usr/local/bin/python; ln -sf /usr/bin/pip3 "$1"/usr/local/bin/pip' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/var/cache/apt/*.bin' \
    bookworm "$WORK/python.tar" ${APT_SOURCES:+"$APT_SOURCES"}
  "$DOCKER" import -q \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
    --change 'CMD ["python3"]' "$WORK/python.tar" "$PYTHON_IMAGE" >/dev/null
  rm -f "$WORK/python.tar"
  say "built $PYTHON_IMAGE in $((SECONDS - t)) s"
}

build_torch() {
  if have "$TORCH_IMAGE" && [ -z "${FORCE:-}" ]; then say "$TORCH_IMAGE exists (FORCE=1 rebuilds)"; return; fi
  build_python
  local t=$SECONDS
  mkdir -p "$WORK/ctx/wheels"
  # The host's pip config points find-links at the CPU wheel; nothing is fetched inside the build.
  $PIP download -q --only-binary=:all: --dest "$WORK/ctx/wheels" "torch==$TORCH_VERSION"
  # a bind mount, so the wheels never become a layer (podman, buildah and BuildKit support it)
  cat > "$WORK/ctx/Containerfile" <<EOF
FROM $PYTHON_IMAGE
RUN --mount=type=bind,source=wheels,target=/tmp/wheels \\
    python -m pip install --no-cache-dir --no-index --find-links /tmp/wheels "torch==$TORCH_VERSION"
EOF
  "$DOCKER" build -q --pull=never -t "$TORCH_IMAGE" -f "$WORK/ctx/Containerfile" "$WORK/ctx" >/dev/null
  say "built $TORCH_IMAGE in $((SECONDS - t)) s"
}

case "$WHAT" in
  python) build_python ;;
  torch) build_torch ;;
  all) build_python; build_torch ;;
  *) echo "usage: $0 [python|torch|all]" >&2; exit 2 ;;
esac
