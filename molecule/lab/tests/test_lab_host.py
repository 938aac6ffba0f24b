"""testinfra checks of a stock lab host: the stand-in GPU on its normal drivers."""


def _driver(host, address: str) -> str:
    link = host.file(f"/sys/bus/pci/devices/{address}/driver")
    return link.linked_to.rsplit("/", 1)[-1] if link.exists else ""


def test_gpu_functions_on_their_normal_drivers(host):
    assert _driver(host, "0000:01:00.0") == "bochs-drm"
    assert _driver(host, "0000:01:00.1") == "snd_hda_intel"


def test_iommu_is_not_on_the_kernel_command_line(host):
    cmdline = host.file("/proc/cmdline").content_string
    assert "intel_iommu" not in cmdline
    assert "iommu=" not in cmdline


def test_ssh_and_the_console_are_what_the_lab_promised(host):
    assert host.service("ssh").is_running
    assert "console=ttyS0,115200" in host.file("/proc/cmdline").content_string
