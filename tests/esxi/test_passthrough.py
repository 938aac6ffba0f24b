"""`gpuprov vm devices` / `vm passthrough --hypervisor esxi` through the installed CLI, against
vcsim as a standalone ESXi host and as a vCenter. The GPUs, the passthrough system's
reboot-needed semantics and the power-on refusals come from gpuprov's passthrough extension of
vcsim (tests/vcsim/passthrough_ext.go), not from stock vcsim. Every VM setting is read back
with an independent pyVmomi session, never taken from gpuprov's own output."""

from __future__ import annotations

import json

import pytest
from pyVim.connect import Disconnect
from pyVim.task import WaitForTask
from pyVmomi import vim

A6000, A6000_AUDIO, T4 = "0000:26:00.0", "0000:26:00.1", "0000:3b:00.0"


def _host_name(sim) -> str:
    # The vCenter model has four hosts; the tests use the first cluster host.
    return "DC0_C0_H0" if sim.model == "vpx" else None


def _gpuprov(run_gpuprov, sim, *args, inventory=None, code=0, env=None):
    inventory = inventory or sim.inventory()
    select = ["-o", f"esx_host={_host_name(sim)}"] if _host_name(sim) else []
    result = run_gpuprov("vm", *args, "--host", "esx1", "-i", str(inventory), *select,
                         check=False, env=env)
    assert result.returncode == code, f"{result.stdout}\n{result.stderr}"
    for stream in (result.stdout, result.stderr):
        assert sim.password not in stream, "the vSphere password was printed"
    return result


def _session(sim):
    si = sim.connect()
    content = si.RetrieveContent()
    return si, content


def _find(content, kind, name):
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        return next((o for o in view.view if o.name == name), None)
    finally:
        view.Destroy()


def _test_host(sim, content):
    if sim.model == "vpx":
        return _find(content, vim.HostSystem, "DC0_C0_H0")
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    return view.view[0]


def _activate(sim, *addresses):
    """Scene: passthrough enabled and in effect (the extension's reboot), done directly."""
    si, content = _session(sim)
    host = _test_host(sim, content)
    system = host.configManager.pciPassthruSystem
    system.UpdatePassthruConfig([vim.host.PciPassthruConfig(id=a, passthruEnabled=True)
                                 for a in addresses])
    WaitForTask(host.RebootHost_Task(force=True))
    Disconnect(si)


def _extra(vm) -> dict[str, str]:
    values = {}
    for option in vm.config.extraConfig:
        values[option.key] = option.value
    return {k: v for k, v in values.items() if v != ""}


def _new_vm(sim, content, name, firmware, version):
    """Scene: an existing, powered-off VM on the test host."""
    host = _test_host(sim, content)
    datacenter = host.parent
    while not isinstance(datacenter, vim.Datacenter):
        datacenter = datacenter.parent
    spec = vim.vm.ConfigSpec(name=name, guestId="otherLinux64Guest", memoryMB=4096, numCPUs=2,
                             firmware=firmware, version=version,
                             files=vim.vm.FileInfo(vmPathName=f"[{host.datastore[0].name}]"))
    task = datacenter.vmFolder.CreateVM_Task(config=spec, pool=host.parent.resourcePool,
                                             host=host)
    WaitForTask(task)
    return task.info.result


def test_devices_enable_then_reboot_through_maintenance_mode(run_gpuprov, vcsim):
    listed = json.loads(_gpuprov(run_gpuprov, vcsim, "devices", "--json").stdout)
    gpus = {d["address"]: d for d in listed["devices"] if d["capable"]}
    assert set(gpus) == {A6000, A6000_AUDIO, T4}
    assert {d["state"] for d in gpus.values()} == {"disabled"}

    enabled = _gpuprov(run_gpuprov, vcsim, "devices", "--enable", "26:00.0")
    assert f"enabled: {A6000}" in enabled.stdout and f"enabled: {A6000_AUDIO}" in enabled.stdout
    assert "needs a reboot" in " ".join(enabled.stdout.split())

    si, content = _session(vcsim)
    host = _test_host(vcsim, content)
    running = [vm for vm in host.vm if vm.runtime.powerState == "poweredOn"]
    # Not a terminal, no --yes: nothing reboots (refused first if VMs run, else not confirmed).
    _gpuprov(run_gpuprov, vcsim, "devices", "--reboot", code=20 if running else 2)
    assert not host.runtime.inMaintenanceMode
    if running:  # the models start VMs; gpuprov refuses to reboot under them
        refused = _gpuprov(run_gpuprov, vcsim, "devices", "--reboot", "--yes", code=20)
        assert "runs VMs" in refused.stderr
        for vm in running:
            WaitForTask(vm.PowerOffVM_Task())

    _gpuprov(run_gpuprov, vcsim, "devices", "--reboot", "--yes")
    states = {i.id: i for i in host.config.pciPassthruInfo}
    assert all(states[a].passthruEnabled and states[a].passthruActive
               for a in (A6000, A6000_AUDIO))
    assert not states[T4].passthruEnabled and not states[T4].passthruActive
    assert not host.runtime.inMaintenanceMode
    Disconnect(si)


def test_create_passthrough_vm(run_gpuprov, vcsim):
    _activate(vcsim, A6000, A6000_AUDIO)
    result = _gpuprov(run_gpuprov, vcsim, "passthrough", "--hypervisor", "esxi", "--gpu",
                      "0000:26:00", "--name", "gpu-vm", "--memory", "16G", "--json")
    report = json.loads(result.stdout)
    assert report["created"] is True
    # 16 GiB for a 48 GiB card: below the 1.5 x rule, said with the numbers (not refused).
    assert ("warning: VM gpu-vm has 16384 MiB of memory, less than 1.5 x its GPUs' 49152 MiB "
            "= 73728 MiB; give it --memory 72G or more") in report["notes"]

    si, content = _session(vcsim)
    vm = _find(content, vim.VirtualMachine, "gpu-vm")
    assert vm.config.firmware == "efi"
    assert vm.config.bootOptions.efiSecureBootEnabled is False
    assert vm.config.memoryReservationLockedToMax is True
    assert vm.config.hardware.memoryMB == 16384
    extra = _extra(vm)
    assert extra["pciPassthru.use64bitMMIO"] == "TRUE"
    assert extra["pciPassthru.64bitMMIOSizeGB"] == "128"  # 48 GiB card: 2 x 48 -> 128
    assert "hypervisor.cpuid.v0" not in extra
    # vmx-19 and the host offers the card for Dynamic DirectPath: dynamic, both functions.
    devices = [d for d in vm.config.hardware.device
               if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]
    backings = sorted((d.backing.allowedDevice[0].deviceId, d.backing.assignedId)
                      for d in devices)
    assert backings == [(0x1AEF, A6000_AUDIO), (0x2230, A6000)]
    assert vm.runtime.powerState == "poweredOn"
    assert vm.runtime.host == _test_host(vcsim, content)
    Disconnect(si)


def test_attach_to_existing_vm_with_static_directpath(run_gpuprov, vcsim):
    _activate(vcsim, T4)
    si, content = _session(vcsim)
    vm = _new_vm(vcsim, content, "legacy", "efi", "vmx-13")
    _gpuprov(run_gpuprov, vcsim, "passthrough", "--hypervisor", "esxi", "--gpu", T4,
             "--vm", "legacy", "--hide-hypervisor")
    extra = _extra(vm)
    assert extra["pciPassthru.64bitMMIOSizeGB"] == "32"  # 16 GiB card: 2 x 16 -> 32
    assert extra["pciPassthru.use64bitMMIO"] == "TRUE"
    assert extra["hypervisor.cpuid.v0"] == "FALSE"
    assert vm.config.memoryReservationLockedToMax is True
    (device,) = [d for d in vm.config.hardware.device
                 if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]
    # Hardware version 13 predates Dynamic DirectPath: static, by id and the host's systemId.
    assert isinstance(device.backing, vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo)
    assert device.backing.id == T4 and device.backing.deviceId == "1eb8"
    assert device.backing.systemId == _test_host(vcsim, content).hardware.systemInfo.uuid
    assert vm.runtime.powerState == "poweredOn"
    Disconnect(si)


def test_device_without_passthrough_enabled_is_refused(run_gpuprov, vcsim):
    si, content = _session(vcsim)
    before = len(_test_host(vcsim, content).vm)
    refused = _gpuprov(run_gpuprov, vcsim, "passthrough", "--hypervisor", "esxi", "--gpu", A6000,
                       code=20)
    assert f"passthrough is not enabled for {A6000}" in refused.stderr
    select = f" -o esx_host={_host_name(vcsim)}" if _host_name(vcsim) else ""
    assert (f"gpuprov vm devices --hypervisor esxi --host esx1{select} --enable {A6000}"
            in " ".join(refused.stderr.split()))
    assert len(_test_host(vcsim, content).vm) == before
    Disconnect(si)


def test_bios_vm_refused_without_convert_then_converted(run_gpuprov, vcsim):
    _activate(vcsim, T4)
    si, content = _session(vcsim)
    vm = _new_vm(vcsim, content, "biosvm", "bios", "vmx-19")
    args = ("passthrough", "--hypervisor", "esxi", "--gpu", T4, "--vm", "biosvm", "--no-start")
    refused = _gpuprov(run_gpuprov, vcsim, *args, code=2)
    assert "BIOS firmware" in refused.stderr and "--convert" in refused.stderr
    assert vm.config.firmware == "bios"
    assert not vm.config.memoryReservationLockedToMax
    assert not [d for d in vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]

    _gpuprov(run_gpuprov, vcsim, *args, "--convert")
    assert vm.config.firmware == "efi"
    assert vm.config.bootOptions.efiSecureBootEnabled is False
    assert vm.config.memoryReservationLockedToMax is True
    assert _extra(vm)["pciPassthru.64bitMMIOSizeGB"] == "32"
    assert [d.backing.allowedDevice[0].deviceId for d in vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualPCIPassthrough)] == [0x1EB8]
    assert vm.runtime.powerState == "poweredOff"
    Disconnect(si)


def test_failed_power_on_removes_the_new_vm_or_keeps_it_when_asked(run_gpuprov, vcsim):
    _activate(vcsim, T4)
    create = ("passthrough", "--hypervisor", "esxi", "--gpu", T4)
    _gpuprov(run_gpuprov, vcsim, *create, "--name", "first")
    # The card is in use by the running "first": the extension refuses the second power-on.
    failed = _gpuprov(run_gpuprov, vcsim, *create, "--name", "second", code=1)
    assert "powering on failed" in failed.stderr and "GenericVmConfigFault" in failed.stderr
    assert "Traceback" not in failed.stderr and "removing the new VM" in failed.stderr
    si, content = _session(vcsim)
    assert _find(content, vim.VirtualMachine, "second") is None

    _gpuprov(run_gpuprov, vcsim, *create, "--name", "kept", "--keep-on-failure", code=1)
    kept = _find(content, vim.VirtualMachine, "kept")
    assert kept is not None and kept.runtime.powerState == "poweredOff"
    Disconnect(si)


def test_failed_power_on_restores_an_existing_vm(run_gpuprov, vcsim):
    _activate(vcsim, T4)
    _gpuprov(run_gpuprov, vcsim, "passthrough", "--hypervisor", "esxi", "--gpu", T4,
             "--name", "holder")
    si, content = _session(vcsim)
    vm = _new_vm(vcsim, content, "victim", "efi", "vmx-19")
    failed = _gpuprov(run_gpuprov, vcsim, "passthrough", "--hypervisor", "esxi", "--gpu", T4,
                      "--vm", "victim", code=1)
    # Dynamic DirectPath (vmx-19): no unused T4 is left to assign at power-on.
    assert "powering on failed" in failed.stderr and "GenericVmConfigFault" in failed.stderr
    assert "restoring its previous settings" in failed.stderr
    assert vm.runtime.powerState == "poweredOff"
    assert not vm.config.memoryReservationLockedToMax
    assert "pciPassthru.64bitMMIOSizeGB" not in _extra(vm)
    assert not [d for d in vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]
    Disconnect(si)


def test_tls_is_verified_and_a_pin_must_match(run_gpuprov, vcsim):
    untrusted = vcsim.inventory(vsphere_ca_file=None)
    refused = _gpuprov(run_gpuprov, vcsim, "devices", inventory=untrusted, code=4)
    assert "is not trusted" in refused.stderr and vcsim.sha256 in refused.stderr

    pinned = vcsim.inventory(vsphere_ca_file=None, vsphere_thumbprint=vcsim.sha256)
    assert A6000 in _gpuprov(run_gpuprov, vcsim, "devices", inventory=pinned).stdout
    sha1 = ":".join(vcsim.sha1[i:i + 2] for i in range(0, 40, 2)).upper()
    sha1_pinned = vcsim.inventory(vsphere_ca_file=None, vsphere_thumbprint=sha1)
    assert A6000 in _gpuprov(run_gpuprov, vcsim, "devices", inventory=sha1_pinned).stdout

    wrong = vcsim.inventory(vsphere_thumbprint="ab" * 32)  # even with the CA trusted
    mismatch = _gpuprov(run_gpuprov, vcsim, "devices", inventory=wrong, code=4)
    assert "does not match vsphere_thumbprint" in mismatch.stderr


@pytest.mark.parametrize("where", ["inventory", "environment"])
def test_wrong_password_is_refused_without_printing_it(run_gpuprov, vcsim, where):
    wrong = "not-" + vcsim.password
    if where == "inventory":
        inventory, env = vcsim.inventory(vsphere_password=wrong), None
    else:
        inventory, env = vcsim.inventory(), {"GPUPROV_VSPHERE_PASSWORD": wrong}
    refused = _gpuprov(run_gpuprov, vcsim, "devices", inventory=inventory, env=env, code=4)
    assert "refused the login of user 'gpuprov-test'" in refused.stderr
    assert wrong not in refused.stdout + refused.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--cores", "99999999999999999999"], "is more than vSphere's 768 vCPUs per VM"),
    (["--cores", "100000"], "--cores 100000 is more than vSphere's 768"),
    (["--memory", "8K"], "--memory 8K is less than 1 MiB"),
    (["--memory", "6"], "--memory 6 MiB is not a VM memory vSphere takes"),
    (["--memory", "99999999999T"], "is not a VM memory vSphere takes"),
    (["--name", "x" * 81], "--name is 81 characters; vSphere takes 1 to 80"),
    (["--mapping", "gpu-26-00"], "--mapping does not apply to ESXi"),
    (["--vmid", "100"], "--vmid does not apply to ESXi"),
])
def test_values_vsphere_would_refuse_never_reach_it(run_gpuprov, vcsim, args, message):
    si, content = _session(vcsim)
    before = len(_test_host(vcsim, content).vm)
    refused = _gpuprov(run_gpuprov, vcsim, "passthrough", "--hypervisor", "esxi", "--gpu", T4,
                       *args, code=2)
    assert message in " ".join(refused.stderr.split()), refused.stderr
    assert "Traceback" not in refused.stderr
    assert len(_test_host(vcsim, content).vm) == before
    Disconnect(si)


@pytest.mark.parametrize(("args", "message"), [
    (["--yes"], "--yes answers the reboot question only"),
    (["--enable", ""], "'' is not a PCI address"),
])
def test_devices_flags_that_would_do_nothing_are_refused(run_gpuprov, vcsim, args, message):
    refused = _gpuprov(run_gpuprov, vcsim, "devices", "--hypervisor", "esxi", *args, code=2)
    assert message in " ".join(refused.stderr.split()), refused.stderr
