"""`gpuprov vm passthrough --hypervisor libvirt` refusals that happen before any change: flags
of other backends, unknown options, and a card the host stage has not isolated (inspection
replaced by real lab probe captures). The real runs are in tests/e2e/test_libvirt_chain.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gpuprov.cli.app import app
from gpuprov.errors import GpuprovError
from gpuprov.plan import gpu_verdicts, kernel_params, select_gpus
from gpuprov.stages import inspect
from gpuprov.stages.inspect import InspectResult
from tests.unit.probe_facts import load


@pytest.fixture
def inspected(monkeypatch) -> list[str]:
    """Inspection answers from the capture of a lab host with two cards, the second on vfio."""
    facts = load("lab-two-gpus-second-on-vfio")
    asked: list[str] = []

    def run(host, *, inventory=None, gpus=()):
        asked.append(host)
        from gpuprov.facts import parse_address
        chosen = select_gpus(facts, [parse_address(g) for g in gpus], host)
        return InspectResult(host, "root@127.0.0.1:2222", facts, kernel_params(facts),
                             tuple(gpu_verdicts(facts, chosen)))

    monkeypatch.setattr(inspect, "run", run)
    return asked


def _refusal(*args: str) -> GpuprovError:
    result = CliRunner().invoke(app, ["vm", "passthrough", "--hypervisor", "libvirt",
                                      "--host", "kvm1", *args])
    assert isinstance(result.exception, GpuprovError), result.output
    return result.exception


def _said(error: GpuprovError) -> str:
    return " ".join(f"{error.message} {error.hint}".split())


@pytest.mark.parametrize(("args", "message"), [
    (["--gpu", "02:00", "--vmid", "100"], "--vmid does not apply to libvirt"),
    (["--gpu", "02:00", "--mapping", "gpu"], "--mapping does not apply to libvirt"),
    (["--gpu", "02:00", "--x-vga"], "--x-vga does not apply to libvirt"),
    (["--gpu", "02:00", "-o", "datacenter=DC0"], "unknown libvirt option datacenter"),
    (["--gpu", "02:00", "-o", "network=default", "-o", "bridge=br0"],
     "network and bridge both set the VM's NIC"),
    (["--gpu", "02:00", "--name", "my vm"], "'my vm' is not a usable libvirt domain name"),
])
def test_flags_of_other_backends_are_refused_before_any_connection(inspected, args, message):
    error = _refusal(*args)
    assert error.exit_code == 2 and message in _said(error)
    assert inspected == [], "the host was contacted for a request that cannot run"


def test_a_card_not_yet_on_vfio_is_refused_with_the_host_stage_as_the_fix(inspected):
    error = _refusal("--gpu", "01:00")
    assert error.exit_code == 20
    output = _said(error)
    assert "0000:01:00 on kvm1 is not ready for passthrough (needs setup)" in output
    assert "0000:01:00.0 is on bochs-drm, not vfio-pci" in output
    assert "gpuprov host setup kvm1 --gpu 0000:01:00" in output
