"""The parsers and verdicts on whole probe outputs: one test per fixture file.

``fixtures/probe/NAME.txt`` is the output of ``gpuprov/facts/probe.sh``: captured from lab hosts
(real Debian kernels under QEMU), except ``seeds-*`` which is assembled from public reports and
says so in its first lines. ``NAME.expected.json`` holds what must be read from it.

The lab captures: ``lab-intel-grub`` (``gpuprov lab up --iommu intel``), ``lab-amd-systemd-boot``
(``--iommu amd --boot systemd-boot``), ``lab-no-iommu-grub`` (``--iommu none``), ``lab-two-gpus``
(``--gpus 2``), and ``lab-two-gpus-second-on-vfio``: the same host after binding 02:00.0 and
02:00.1 to vfio-pci at run time (``driver_override`` + ``drivers_probe``), a real "ready" card.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuprov.facts import parse_host_facts
from gpuprov.plan import gpu_verdicts, inspect_exit_code, kernel_params

FIXTURES = Path(__file__).parent / "fixtures" / "probe"
CASES = sorted(p.stem for p in FIXTURES.glob("*.txt"))


def project(text: str) -> dict:
    """The parts of the facts and verdicts each fixture pins down."""
    facts = parse_host_facts(text)
    verdicts = gpu_verdicts(facts, facts.gpus)
    params = kernel_params(facts)
    configured = facts.configured_cmdline
    return {
        "cpu_vendor": facts.cpu_vendor,
        "kernel": facts.kernel,
        "firmware": facts.firmware,
        "secure_boot": facts.secure_boot,
        "iommu_in_firmware": facts.iommu_in_firmware,
        "iommu_active": facts.iommu_active,
        "interrupt_remapping": facts.interrupt_remapping,
        "passthrough_mode": facts.passthrough_mode,
        "kernel_enables_intel_iommu_by_default": facts.kernel_enables_intel_iommu_by_default,
        "bootloader": {
            "kind": facts.bootloader.kind,
            "mode": facts.bootloader.mode,
            "decided_by": {s.name: s.value for s in facts.bootloader.decided_by},
        },
        "configured_cmdline": {"source": configured.source,
                               "cmdline": str(configured.cmdline) if configured.cmdline else None},
        "root": [facts.root_fstype, facts.root_source],
        "root_disk_controllers": list(facts.root_disk_controllers),
        "mgmt_interface": facts.mgmt_interface,
        "mgmt_nic_addresses": list(facts.mgmt_nic_addresses),
        "vfio_groups": list(facts.vfio_groups),
        "kernel_params": {"add": list(params.add), "remove": list(params.remove)},
        "gpus": [
            {
                "slot": v.gpu.slot,
                "functions": [[f.address, f.vendor_device, f.driver, f.iommu_group, f.boot_vga]
                              for f in v.gpu.functions],
                "verdict": v.status,
                "refusals": [r.reason for r in v.refusals],
                "warnings": len(v.warnings),
            }
            for v in verdicts
        ],
        "exit_code": inspect_exit_code(verdicts),
        "notes": list(facts.notes),
    }


@pytest.mark.parametrize("case", CASES)
def test_probe_output(case):
    text = (FIXTURES / f"{case}.txt").read_text()
    expected = json.loads((FIXTURES / f"{case}.expected.json").read_text())
    assert project(text) == expected


def test_every_fixture_has_expectations():
    assert CASES, "no probe fixtures found"
    for case in CASES:
        assert (FIXTURES / f"{case}.expected.json").is_file(), case


def test_the_assembled_fixture_says_it_was_not_captured():
    head = (FIXTURES / "seeds-ryzen-gt1030-pve8-grub.txt").read_text().split("### probe")[0]
    assert "NOT CAPTURED HERE" in head and "public reports" in head
