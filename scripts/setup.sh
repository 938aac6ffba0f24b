#!/usr/bin/env bash
# Set up everything gpuprov and its tests need on a Debian-family machine, idempotently:
# the Debian packages the lab uses (QEMU, OVMF, image-building tools), then a project
# virtualenv in .venv with gpuprov installed in editable mode plus the dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  qemu-system-x86 qemu-utils ovmf          # the lab's virtual machines and UEFI firmware
  zstd                                      # the lab's checkpoints (QEMU migration streams)
  debootstrap                               # the lab image, from Debian's archive
  gdisk dosfstools mtools e2fsprogs         # its disk: GPT, ESP (no loop devices), ext4 root
  openssh-client                            # ssh-keygen and `gpuprov lab ssh`
  openssh-server                            # sshd, for bench/fleet.py's loopback endpoints (not started)
  python3-venv
  cpio                                      # reads the nested guest's initramfs in a unit test
  apt-utils gnupg                           # apt-ftparchive and gpg: the signed stand-in NVIDIA repositories
  golang-go golang-github-vmware-govmomi-dev  # vcsim for tests/esxi: built from tests/vcsim/
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($python --version)"
  $python -m venv .venv
fi
# Reinstall only when the declared dependencies changed.
stamp=.venv/.gpuprov-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: installing gpuprov and its dev tools into .venv"
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[dev]'
  touch "$stamp"
fi
