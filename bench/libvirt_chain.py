"""The whole chain for a user, with each stage's time: a lab GPU host from nothing to a libvirt
VM whose guest sees the card.

    .venv/bin/python bench/libvirt_chain.py

Stages: `gpuprov lab up --after host-setup` (IOMMU on, card on vfio-pci, one reboot: the
cached result, or on a miss the stage run for real and cached; GPUPROV_LAB_COLD=1 always runs it) ->
the tiny nested guest's kernel and initramfs put on the host -> `gpuprov vm passthrough
--hypervisor libvirt` (installs libvirt, defines and starts a q35/OVMF domain with the card) ->
the nested guest boots and prints the PCI devices it sees. Everything runs under software
emulation (the guest is emulated inside an emulated host), so the figures are this machine's,
not a real server's. The host boots in a private lab directory and is destroyed afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.e2e

from private_lab import private_lab

from tests.e2e.libvirt_chain import run_chain


def main() -> int:
    with private_lab() as lab:
        run = run_chain(lab.root, "bench-chain",
                        lambda stage, seconds: print(f"{stage:<58}{seconds:8.1f} s", flush=True))
    print(f"{'total':<58}{sum(run.seconds.values()):8.1f} s")
    print("the nested guest saw:")
    for address, device_id, device_class in run.devices:
        print(f"  {address} [{device_id}] class {device_class}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
