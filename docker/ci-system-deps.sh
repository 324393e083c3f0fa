#!/usr/bin/env bash
# System packages the container, SLURM and PostgreSQL tests need (Debian 12, root), installed only when
# absent. Called by .ci/run before `make install`. Where it cannot install (not root, no apt), it says so
# and exits 0: those tests then skip with the reason in the pytest summary.
#   podman runc mmdebstrap  -> real image builds (podman: daemonless; runc: crun fails on hybrid cgroups)
#   slurm-wlm munge         -> slurm/local-cluster.sh (a real single-node cluster)
#   postgresql              -> the Optuna PostgreSQL storage test (a throw-away server on a loopback port)
#   chromium fonts-dejavu-core -> the page tests (Playwright drives Debian's headless chromium: no browser download)
set -uo pipefail
want=()
command -v podman >/dev/null || want+=(podman)
command -v runc >/dev/null || want+=(runc)
command -v mmdebstrap >/dev/null || want+=(mmdebstrap)
command -v slurmctld >/dev/null || want+=(slurm-wlm)
command -v munged >/dev/null || want+=(munge)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || want+=(postgresql)
command -v chromium >/dev/null || want+=(chromium fonts-dejavu-core)
if [ ${#want[@]} -eq 0 ]; then echo "ci-system-deps: all present"; exit 0; fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "ci-system-deps: cannot install ${want[*]} (needs root and apt-get); their tests will skip" >&2
  exit 0
fi
start=$SECONDS
echo "ci-system-deps: installing ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
# postinst scripts must not try to start services (there is no init system here)
policy=/usr/sbin/policy-rc.d
[ -e $policy ] || { printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; trap 'rm -f $policy' EXIT; }
# podman with its recommends (netavark, slirp4netns, fuse-overlayfs, catatonit: the tested set), the rest without
with=(); without=()
for p in "${want[@]}"; do if [ "$p" = podman ]; then with+=("$p"); else without+=("$p"); fi; done
if apt-get update -qq \
  && { [ ${#with[@]} -eq 0 ] || apt-get install -y -qq "${with[@]}" >/dev/null; } \
  && { [ ${#without[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${without[@]}" >/dev/null; }; then
  echo "ci-system-deps: done in $((SECONDS - start)) s"
else
  echo "ci-system-deps: apt-get failed; the tests needing ${want[*]} will skip" >&2
fi
exit 0
