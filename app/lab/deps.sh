#!/usr/bin/env bash
# Install the Debian packages the emulated lab needs on this machine.
#
# Idempotent: installs only what is missing, and refreshes the package lists
# only when something is missing. Run as root. The lab hosts use the host root
# as the lower layer of their overlay, so whatever this installs (sshd, the
# venv module, python3) is what the hosts see too. Do not run it while the lab
# is up: changing a mounted lower layer is undefined.
set -euo pipefail

PACKAGES=(
    systemd-container   # systemd-nspawn
    systemd             # PID 1 inside each host
    dbus                # system bus inside each host
    openssh-server      # sshd inside each host
    openssh-client      # ssh, ssh-keygen on the controller
    python3             # /usr/bin/python3 for Ansible inside the hosts
    python3-venv        # python3 -m venv inside the hosts
    iproute2            # ip netns, veth, bridge
)

if [[ $(id -u) -ne 0 ]]; then
    echo "deps.sh: must run as root" >&2
    exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    if [[ $status != "install ok installed" ]]; then
        missing+=("$package")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "deps.sh: all lab packages present"
    exit 0
fi

if [[ -e /sys/class/net/bib-br0 ]]; then
    # The hosts' overlays have this machine's root as lower layer: changing it
    # under mounted overlays is undefined.
    echo "deps.sh: missing ${missing[*]}, but the lab is up: run 'lab down' first" >&2
    exit 1
fi

echo "deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# Starting sshd on the controller is not wanted: policy-rc.d refuses service
# starts during the install (there is no systemd as PID 1 here anyway).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
fi
trap '[[ $created_policy -eq 1 ]] && rm -f "$policy"' EXIT
apt-get install -y -q --no-install-recommends "${missing[@]}"
