"""The iommu role's kernel command line filters (roles/iommu/filter_plugins)."""

import importlib.util
from pathlib import Path

import pytest

_PLUGIN = Path(__file__).resolve().parents[2] / "roles/iommu/filter_plugins/kernel_cmdline.py"
_spec = importlib.util.spec_from_file_location("kernel_cmdline", _PLUGIN)
kernel_cmdline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_cmdline)


@pytest.mark.parametrize(
    ("cmdline", "wanted", "missing"),
    [
        ("ro quiet", ["intel_iommu=on", "iommu=pt"], ["intel_iommu=on", "iommu=pt"]),
        ("ro quiet iommu=pt", ["intel_iommu=on", "iommu=pt"], ["intel_iommu=on"]),
        # The administrator's own value for a key is theirs to keep.
        ("intel_iommu=on,igfx_off", ["intel_iommu=on"], []),
        ("", ["iommu=pt", "iommu=pt"], ["iommu=pt"]),
        ('root=/dev/sda1 dyndbg="file x.c +p"', ["iommu=pt"], ["iommu=pt"]),
    ],
)
def test_missing_params(cmdline, wanted, missing):
    assert kernel_cmdline.kernel_params_missing(cmdline, wanted) == missing


def test_add_is_idempotent():
    once = kernel_cmdline.kernel_cmdline_add("root=UUID=x ro quiet", ["iommu=pt"])
    assert once == "root=UUID=x ro quiet iommu=pt"
    assert kernel_cmdline.kernel_cmdline_add(once, ["iommu=pt"]) == once


def test_grub_default_value_reads_the_last_assignment_and_ignores_comments():
    text = (
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
        "# GRUB_CMDLINE_LINUX_DEFAULT=\"commented\"\n"
        'GRUB_CMDLINE_LINUX="console=ttyS0,115200"\n'
        "GRUB_CMDLINE_LINUX_DEFAULT='quiet splash'  # a comment\n"
    )
    assert kernel_cmdline.grub_default_value(text, "GRUB_CMDLINE_LINUX_DEFAULT") == "quiet splash"
    assert kernel_cmdline.grub_default_value(text, "GRUB_CMDLINE_LINUX") == "console=ttyS0,115200"
    assert kernel_cmdline.grub_default_value(text, "GRUB_TIMEOUT") == ""
