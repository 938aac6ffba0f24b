"""`gpuprov host inspect` (and `host setup`, which starts with it): refusals through the
installed CLI (none gets as far as a probe), and rendering with the stage stubbed by a result
parsed from a real lab capture."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuprov import inventory as inventory_
from gpuprov.cli.app import app
from gpuprov.errors import HostUnreachable
from gpuprov.facts import parse_host_facts
from gpuprov.plan import gpu_verdicts, kernel_params
from gpuprov.stages import inspect as stage

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "probe"


def _refused(result, code: int, *phrases: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in " ".join(result.stderr.split()), result.stderr


def _inventory(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text(
        "all:\n  hosts:\n    gpu1:\n      ansible_host: 127.0.0.1\n"
        f"      ansible_port: {port}\n      ansible_user: root\n"
        f"      ansible_ssh_private_key_file: {tmp_path}/key\n"
        f"      ansible_ssh_common_args: -o UserKnownHostsFile={tmp_path}/known_hosts\n")
    return path


# Both verbs gather the same way; setup must refuse exactly as inspect does, before any change.
VERBS = pytest.mark.parametrize("verb", ["inspect", "setup"])


@VERBS
def test_bad_address_is_refused_before_any_connection(run_gpuprov, verb):
    result = run_gpuprov("host", verb, "gpu1", "--gpu", "26:zz", check=False)
    _refused(result, 2, "'26:zz' is not a PCI address", "hint: give the GPU as lspci shows it")


@VERBS
def test_no_lab_inventory_yet(run_gpuprov, lab_root, verb):
    result = run_gpuprov("host", verb, "pve1", check=False)
    _refused(result, 3, f"inventory {lab_root}/inventory.yml does not exist", "gpuprov lab up")


@VERBS
def test_unknown_host_names_the_inventory_and_its_hosts(run_gpuprov, tmp_path, verb):
    inventory = _inventory(tmp_path, 22)
    result = run_gpuprov("host", verb, "gpu9", "-i", str(inventory), check=False)
    _refused(result, 3, f"no host named 'gpu9' in the inventory {inventory}",
             "the hosts there are: gpu1")


@VERBS
def test_unreachable_host_names_host_and_port(run_gpuprov, tmp_path, verb):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens
    (tmp_path / "key").write_text("not used: the connection is refused first\n")
    result = run_gpuprov("host", verb, "gpu1", "-i", str(_inventory(tmp_path, port)),
                         check=False)
    _refused(result, 4, f"cannot reach gpu1 over SSH (root@127.0.0.1:{port})",
             f"sshd listens on port {port}")


@pytest.mark.parametrize(("verb", "phrases"), [
    ("inspect", ("0 every GPU", "10 some need setup", "20 some are unsafe")),
    ("setup", ("0 done (or nothing to do, or --check)", "20 refused as unsafe (nothing "
               "changed)", "2 bad input or not confirmed")),
])
def test_help_documents_the_exit_codes(run_gpuprov, verb, phrases):
    text = " ".join(run_gpuprov("host", verb, "--help").stdout.split())
    for phrase in phrases:
        assert phrase in text


@pytest.fixture
def stubbed(monkeypatch):
    """The stage returns what it would for the lab's stock Intel/GRUB host."""
    facts = parse_host_facts((FIXTURES / "lab-intel-grub.txt").read_text())
    result = stage.InspectResult("hi", "root@127.0.0.1:2222", facts, kernel_params(facts),
                                 tuple(gpu_verdicts(facts, facts.gpus)))
    calls = []

    def run(host, *, inventory=None, gpus=()):
        calls.append((host, inventory, list(gpus)))
        return result

    monkeypatch.setattr(stage, "run", run)
    monkeypatch.setattr(inventory_, "hosts_matching", lambda pattern, inventory: [pattern])
    return calls


def test_json_is_one_document_and_the_exit_code_passes_through(stubbed):
    result = CliRunner().invoke(app, ["host", "inspect", "hi", "--json", "--gpu", "01:00"])
    assert result.exit_code == 10, result.output
    document = json.loads(result.stdout)
    assert stubbed == [("hi", None, ["01:00"])]
    [gpu] = document["gpus"]
    assert gpu["verdict"] == "needs setup"
    assert [f["driver"] for f in gpu["functions"]] == ["bochs-drm", "snd_hda_intel"]
    assert document["facts"]["bootloader"]["kind"] == "grub"
    assert document["exit_code"] == 10


def test_tables_show_the_summary_signals_and_verdict(stubbed):
    result = CliRunner().invoke(app, ["host", "inspect", "hi"], env={"COLUMNS": "200"})
    assert result.exit_code == 10
    out = result.stdout
    for phrase in ("IOMMU in firmware", "yes (DMAR)", "interrupt remapping", "boot loader",
                   "* /etc/default/grub: present", "cmdline (/etc/default/grub)",
                   "GPU 0000:01:00: needs setup", "bochs-drm", "snd_hda_intel",
                   "0000:01:00.0 is on bochs-drm, not vfio-pci", "boot VGA",
                   "enp0s2 on 0000:00:02.0, IOMMU group 2"):
        assert phrase in out, phrase


def test_a_pattern_gets_one_table_and_the_worst_exit_code(monkeypatch):
    facts = parse_host_facts((FIXTURES / "lab-intel-grub.txt").read_text())

    def run(host, *, inventory=None, gpus=()):
        if host == "gpu3":
            raise HostUnreachable(f"cannot reach {host} over SSH", "check that it is up")
        return stage.InspectResult(host, f"root@{host}:22", facts, kernel_params(facts),
                                   tuple(gpu_verdicts(facts, facts.gpus)))

    monkeypatch.setattr(stage, "run", run)
    monkeypatch.setattr(inventory_, "hosts_matching",
                        lambda pattern, inventory: ["gpu1", "gpu2", "gpu3"])
    result = CliRunner().invoke(app, ["host", "inspect", "gpu_hosts"], env={"COLUMNS": "200"})
    assert result.exit_code == 4, result.output
    assert "3 hosts" in result.stdout
    for host in ("gpu1", "gpu2", "gpu3"):
        assert host in result.stdout
    assert result.stdout.count("0000:01:00: needs setup") == 2
    assert "cannot reach gpu3 over SSH" in result.stdout
    document = json.loads(CliRunner().invoke(
        app, ["host", "inspect", "gpu_hosts", "--json"]).stdout)
    assert document["exit_code"] == 4
    assert [h["exit_code"] for h in document["hosts"]] == [10, 10, 4]
    assert document["hosts"][2]["error"] == "cannot reach gpu3 over SSH"
