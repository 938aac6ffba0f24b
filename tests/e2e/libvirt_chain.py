"""The whole chain on one lab host, stage by stage, through the real CLI:

    gpuprov lab up NAME --after host-setup -> gpuprov vm passthrough --hypervisor libvirt
    -> the nested guest's own serial console lists the PCI devices it enumerated.

Used by tests/e2e/test_libvirt_chain.py (which asserts on the guest's output) and by
bench/libvirt_chain.py (which prints each stage's time). The nested guest is tiny: the lab
host's Debian kernel and a busybox initramfs (tests/e2e/nested_guest.py), booted by libvirt
from the domain gpuprov defined, under software emulation inside software emulation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpuprov.lab.hosts import Lab
from tests.e2e import nested_guest

GPUPROV = str(Path(sys.executable).with_name("gpuprov"))
GUEST_DIR = "/var/lib/gpuprov-e2e"
DOMAIN = "nested"
LAB_HOST_MEMORY_MIB = 2048  # the lab host runs libvirtd and a QEMU with 256 MiB, all locked
CONSOLE_TIMEOUT = 1800  # seconds for the nested guest to print its devices


@dataclass
class ChainRun:
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time
    passthrough: dict = field(default_factory=dict)  # `vm passthrough --json`'s report
    console: str = ""  # the nested guest's serial console log
    devices: list[tuple[str, str, str]] = field(default_factory=list)  # as the guest saw them


def gpuprov(lab_dir: Path, *args: str, timeout: float = 3600) -> str:
    """Run the CLI against the lab in ``lab_dir``; its stdout, or AssertionError with both."""
    result = subprocess.run([GPUPROV, *args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "GPUPROV_LAB_DIR": str(lab_dir)},
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise AssertionError(f"gpuprov {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result.stdout


def run_chain(lab_dir: Path, name: str,
              stage_done: Callable[[str, float], None] = lambda stage, seconds: None
              ) -> ChainRun:
    """Every stage on lab host ``name`` (booted here); the caller destroys it."""
    run = ChainRun()

    def stage(label: str, action: Callable[[], object]):
        started = time.monotonic()
        value = action()
        run.seconds[label] = time.monotonic() - started
        stage_done(label, run.seconds[label])
        return value

    # The host-setup stage's own tests (tests/e2e/test_host_setup.py, molecule) run it for
    # real; this chain starts from its cached result, which on a miss runs it for real too.
    stage("lab up --after host-setup (IOMMU, vfio-pci, one reboot)",
          lambda: gpuprov(lab_dir, "lab", "up", name, "--memory", str(LAB_HOST_MEMORY_MIB),
                          "--after", "host-setup"))
    boot = stage("nested guest payload (build once, upload)", lambda: nested_guest.upload(
        Lab(lab_dir).ssh_target(name), GUEST_DIR))
    report = stage("vm passthrough --hypervisor libvirt (installs libvirt)", lambda: gpuprov(
        lab_dir, "vm", "passthrough", "--hypervisor", "libvirt", "--host", name,
        "--gpu", "01:00", "--name", DOMAIN, "--memory", "256M", "--cores", "1", "--disk", "1G",
        "-o", f"kernel={boot['kernel']}", "-o", f"initrd={boot['initrd']}",
        "-o", f"cmdline={boot['cmdline']}", "--json"))
    run.passthrough = json.loads(report)
    log = run.passthrough["settings"]["console_log"]
    run.console = stage("nested guest boots and lists its PCI devices",
                        lambda: _wait_for_console(lab_dir, name, log))
    run.devices = nested_guest.parse_console(run.console)
    return run


def _wait_for_console(lab_dir: Path, name: str, log: str) -> str:
    deadline = time.monotonic() + CONSOLE_TIMEOUT
    text = ""
    while time.monotonic() < deadline:
        text = gpuprov(lab_dir, "lab", "ssh", name, "--", f"cat {log} 2>/dev/null || true")
        if nested_guest.finished(text):
            return text
        time.sleep(15)
    raise AssertionError(f"the nested guest did not finish within {CONSOLE_TIMEOUT} s; its "
                         f"console so far:\n{text[-3000:]}")
