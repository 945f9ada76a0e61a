#!/usr/bin/env bash
# Install Debian's single-node SLURM (slurm-wlm: slurmctld, slurmd, the s* commands) and
# munge for `make test-slurm`. Nothing is done when they are already there. CI runs as root
# with the package registries; elsewhere, ask an administrator or install them yourself
# (`sudo apt-get install slurm-wlm munge`). No daemon is started here: tests/slurm does that.
set -euo pipefail

missing=()
for command in sbatch slurmctld slurmd munged; do
    command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ] || missing+=("$command")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_slurm: slurm and munge are installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm: ${missing[*]} missing and this is not root: install Debian's slurm-wlm and munge" \
         "(sudo apt-get install --no-install-recommends slurm-wlm munge) and run again" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm: ${missing[*]} missing and there is no apt-get: install SLURM and munge with this" \
         "system's package manager" >&2
    exit 1
fi
echo "install_slurm: ${missing[*]} missing; installing Debian's slurm-wlm and munge:"
echo "+ apt-get update"
apt-get update
echo "+ apt-get install -y --no-install-recommends slurm-wlm munge"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge
echo "install_slurm: installed slurm-wlm $(dpkg-query -W -f '${Version}' slurm-wlm 2>/dev/null)"
