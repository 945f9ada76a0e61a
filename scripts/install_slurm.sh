#!/usr/bin/env bash
# Install Debian's single-node SLURM (slurm-wlm: slurmctld, slurmd, the s* commands) and
# munge for `make test-slurm`. Nothing is done when they are already there. No daemon is
# started here: tests/slurm does that.
set -euo pipefail

missing=()
for command in sbatch slurmctld slurmd munged; do
    command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ] || missing+=("$command")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_slurm: slurm and munge are installed"
    exit 0
fi
echo "install_slurm: ${missing[*]} missing"
bash "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" install_slurm slurm-wlm munge
echo "install_slurm: installed slurm-wlm $(dpkg-query -W -f '${Version}' slurm-wlm 2>/dev/null)"
