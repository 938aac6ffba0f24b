"""`gpuprov host inspect` against a real lab host: SSH, the probe, the parsers and the verdict."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.vm


def test_inspect_a_stock_lab_host(run_gpuprov, lab_root):
    run_gpuprov("lab", "up", "insp")
    try:
        result = run_gpuprov("host", "inspect", "insp", "--json", check=False)
        assert result.returncode == 10, result.stdout + result.stderr
        document = json.loads(result.stdout)
        facts = document["facts"]
        assert facts["cpu_vendor"] == "intel"
        assert facts["iommu_in_firmware"] and facts["iommu_active"]
        assert facts["bootloader"]["kind"] == "grub"
        assert {s["name"] for s in facts["bootloader"]["signals"] if s["decisive"]} >= {
            "/etc/default/grub"}

        [gpu] = [g for g in document["gpus"]
                 if "0000:01:00.0" in [f["address"] for f in g["functions"]]]
        functions = {f["address"]: f for f in gpu["functions"]}
        assert set(functions) == {"0000:01:00.0", "0000:01:00.1"}
        assert functions["0000:01:00.0"]["vendor_device"] == "1234:1111"
        assert functions["0000:01:00.0"]["driver"] == "bochs-drm"
        assert functions["0000:01:00.1"]["vendor_device"] == "8086:293e"
        assert functions["0000:01:00.1"]["driver"] == "snd_hda_intel"
        assert functions["0000:01:00.0"]["boot_vga"] is True
        assert gpu["verdict"] == "needs setup"
        assert gpu["refusals"] == [] and gpu["group_mates"] == []
        assert "/dev/vfio/{}".format(gpu["iommu_groups"][0]) in " ".join(gpu["missing"])

        # The same host by a form users type, as tables.
        table = run_gpuprov("host", "inspect", "insp", "--gpu", "01:00.1", check=False)
        assert table.returncode == 10, table.stderr
        assert "GPU 0000:01:00: needs setup" in table.stdout
    finally:
        run_gpuprov("lab", "destroy", "insp")
