"""What the fabricmanager role decides and reads: the package names for a driver branch and the
version each must have, the host's state from files/fabricmanager-state.sh, and the diagnosis
of CUDA's Error 802 ("system not yet initialized"). The exact builds are chosen by the
pinned_packages role. Pure functions; they import
nothing from Ansible or gpuprov, so the role, gpuprov and the tests all load this file.
"""

from __future__ import annotations

import re

# From the 580 branch on, NVIDIA's repositories name the packages without the branch
# (nvidia-fabricmanager, libnvidia-nscq); before it, with it (nvidia-fabricmanager-535).
UNVERSIONED_FROM_BRANCH = 580
SERVICE = "nvidia-fabricmanager"
# FABRIC_MODE in fabricmanager.cfg (NVIDIA Fabric Manager User Guide, "Fabric Manager
# configuration"): 0 bare metal or full passthrough, 1 Shared NVSwitch (the service VM), 2 vGPU
# multitenancy (the hypervisor host).
FABRIC_MODES = {0: "bare metal / full passthrough", 1: "Shared NVSwitch (service VM)",
                2: "vGPU multitenancy (hypervisor host)"}


def upstream_version(version: str) -> str:
    """A Debian version without its epoch and revision: 1:535.261.03-1~deb12u1 -> 535.261.03."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def driver_branch(driver_version: str) -> int:
    match = re.fullmatch(r"(\d+)\.\d+(\.\d+)?", upstream_version(driver_version or ""))
    if not match:
        raise ValueError(f"{driver_version!r} is not an NVIDIA driver version such as 535.261.03")
    return int(match[1])


def fabricmanager_packages(driver_version: str, nvlink5: bool = False) -> list[str]:
    """The packages that give fabricmanager for a driver: the daemon and NSCQ (the NVSwitch
    configuration and query library) at the driver's exact version; on NVLink5 systems (HGX
    B200/B300, GB200 NVL) also NVLSM, the NVLink subnet manager, which versions apart."""
    branch = driver_branch(driver_version)
    suffix = "" if branch >= UNVERSIONED_FROM_BRANCH else f"-{branch}"
    packages = [f"nvidia-fabricmanager{suffix}", f"libnvidia-nscq{suffix}"]
    return packages + (["nvlsm"] if nvlink5 else [])


def fabricmanager_wanted(driver_version: str, nvlink5: bool = False) -> dict[str, str]:
    """Each package with the version it must have: the daemon and NSCQ at the driver's own
    version (never a newer one, which refuses this driver), NVLSM at its newest ("")."""
    upstream = upstream_version(driver_version)
    return {package: "" if package == "nvlsm" else upstream
            for package in fabricmanager_packages(driver_version, nvlink5)}


def fabricmanager_sections(text: str) -> dict[str, list[str]]:
    """The state script's "== name" sections, each as its non-empty lines (indentation kept)."""
    sections: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in (text or "").splitlines():
        if line.startswith("== "):
            lines = sections.setdefault(line[3:].strip(), [])
        elif line.strip():
            lines.append(line.rstrip())
    return sections


def parse_fabric(lines: list[str]) -> dict:
    """``nvidia-smi -q``'s GPU headers and Fabric blocks: each GPU's fabric State and Status
    ("Completed"/"Success" once fabricmanager registered it; "N/A" on cards without a fabric).
    ``error`` is nvidia-smi's own message when it exited non-zero."""
    gpus: list[dict] = []
    code, messages, in_fabric = 0, [], False
    for line in lines:
        if match := re.fullmatch(r"exit (\d+)", line.strip()):
            code = int(match[1])
        elif match := re.match(r"^GPU ([0-9A-Fa-f:.]+)$", line.strip()):
            gpus.append({"address": match[1].lower(), "state": "", "status": ""})
            in_fabric = False
        elif line.strip() == "Fabric":
            in_fabric = True
        elif in_fabric and gpus and (match := re.match(r"^\s+(State|Status)\s+:\s*(.*)$", line)):
            gpus[-1][match[1].lower()] = match[2].strip()
        elif not gpus:
            messages.append(line.strip())
    return {"exit": code, "gpus": gpus, "error": " ".join(messages) if code else ""}


def fabricmanager_state(text: str, pins: dict, expected_mode: int | None = None) -> dict:
    """The host's fabricmanager state from the state script, what is wrong with it, and the
    causes of Error 802 it shows, each with its fix. ``pins``: package -> the exact version the
    role chose (empty when it installed nothing)."""
    sections = fabricmanager_sections(text)
    nvswitches = [line.strip() for line in sections.get("nvswitch", [])]
    loaded = (sections.get("loaded") or [""])[0].strip() or None
    module = (sections.get("module") or [""])[0].strip() or None
    installed = {}
    for line in sections.get("packages", []):
        fields = line.split()
        if len(fields) == 3 and fields[2] in ("ii", "hi"):
            installed[fields[0]] = fields[1]
    holds = {line.strip() for line in sections.get("holds", [])}
    service = dict(line.strip().split("=", 1) for line in sections.get("service", [])
                   if "=" in line)
    mode_lines = [line.strip() for line in sections.get("config", [])
                  if re.fullmatch(r"\s*FABRIC_MODE\s*=\s*\d+\s*", line)]
    fabric_mode = int(mode_lines[-1].split("=")[1]) if mode_lines else None
    virt = (sections.get("virt") or ["none"])[0].strip() or "none"
    fabric = parse_fabric(sections.get("fabric", []))
    journal = [line.strip() for line in sections.get("journal", [])]
    driver = module or loaded

    problems: list[str] = []
    missing = [p for p in pins if p not in installed]
    if missing:
        problems.append(f"not installed: {' '.join(missing)}")
    off_pin = sorted(p for p, v in pins.items() if p in installed and installed[p] != v)
    if off_pin:
        problems.append("not at their pinned versions: " + ", ".join(
            f"{p} {installed[p]} (pinned {pins[p]})" for p in off_pin))
    unheld = sorted(set(pins) & set(installed) - holds)
    if unheld:
        problems.append(f"not held (apt-mark hold them): {' '.join(unheld)}")
    if pins and service.get("UnitFileState") not in ("enabled", "enabled-runtime"):
        problems.append(f"{SERVICE}.service is {service.get('UnitFileState') or 'missing'}, "
                        "not enabled: systemctl enable nvidia-fabricmanager")
    if expected_mode is not None and pins and fabric_mode != expected_mode:
        problems.append(f"FABRIC_MODE is {fabric_mode}, not {expected_mode} "
                        f"({FABRIC_MODES.get(expected_mode, 'unknown')})")

    causes = _error_802(installed, driver, nvswitches, service, fabric, fabric_mode, virt,
                        journal)
    problems.extend(causes)
    return {
        "nvswitches": nvswitches, "driver": driver, "loaded": loaded, "installed": installed,
        "service": service, "fabric_mode": fabric_mode, "virt": virt, "fabric": fabric,
        "error_802": causes, "problems": problems,
    }


def _error_802(installed: dict, driver: str | None, nvswitches: list[str], service: dict,
               fabric: dict, fabric_mode: int | None, virt: str, journal: list[str]) -> list[str]:
    """Each reason CUDA would fail with Error 802 here, as "Error 802 cause: ..., fix: ..."."""
    causes = []
    daemons = {p: v for p, v in installed.items() if p.startswith("nvidia-fabricmanager")}
    for package, version in sorted(daemons.items()):
        if driver and upstream_version(version) != upstream_version(driver):
            causes.append(
                f"Error 802 cause: versions differ: {package} is {upstream_version(version)} "
                f"but the driver is {upstream_version(driver)}, and fabricmanager refuses a "
                f"driver of another version. Fix: install {package} at "
                f"{upstream_version(driver)} and hold it (the fabricmanager role pins it to "
                "the driver's version), then systemctl restart nvidia-fabricmanager")
    in_vm = virt != "none"
    gpu_states = [g for g in fabric["gpus"] if g["state"] and g["state"] != "N/A"]
    if gpu_states and not nvswitches:
        where = ("pass the NVSwitches through with the GPUs (full passthrough, FABRIC_MODE=0 "
                 "here), or run fabricmanager in the service VM (Shared NVSwitch, "
                 "FABRIC_MODE=1) and activate this VM's partition there"
                 if in_vm else
                 "check that the driver sees them (dmesg | grep -i nvswitch; "
                 "ls /proc/driver/nvidia-nvswitch/devices) and that the driver is loaded")
        causes.append(f"Error 802 cause: NVSwitch missing: the GPUs wait for an NVLink fabric "
                      f"(state {gpu_states[0]['state']}) but this "
                      f"{'VM' if in_vm else 'host'} has no NVSwitch device. Fix: {where}")
    if nvswitches and daemons and service.get("ActiveState") != "active":
        why = f" (journal: {journal[-1]})" if journal else ""
        causes.append(f"Error 802 cause: service down: {SERVICE} is "
                      f"{service.get('ActiveState') or 'not installed'}{why}. Fix: systemctl "
                      f"start {SERVICE}, and read journalctl -u {SERVICE} if it stops again")
    if nvswitches and not daemons:
        causes.append("Error 802 cause: service down: this host has NVSwitches but no "
                      "fabricmanager. Fix: run the fabricmanager role")
    for gpu in gpu_states:
        if gpu["state"] != "Completed" or gpu["status"] not in ("Success", ""):
            fix = {"In Progress": "fabricmanager is still training the NVLinks: wait a minute "
                                  "and look again",
                   "Not Started": f"fabricmanager has not registered the GPU: systemctl restart "
                                  f"{SERVICE} once the driver is loaded"}.get(
                gpu["state"], f"reset the GPUs (nvidia-smi -r) and restart {SERVICE}")
            causes.append(f"Error 802 cause: fabric not completed: GPU {gpu['address']} is "
                          f"{gpu['state']}/{gpu['status'] or 'no status'}. Fix: {fix}")
    if in_vm and nvswitches and fabric_mode is not None:
        wanted = 0 if fabric["gpus"] else 1
        if fabric_mode != wanted:
            causes.append(
                f"Error 802 cause: wrong FABRIC_MODE in a VM: this {virt} VM has "
                f"{'the GPUs and ' if fabric['gpus'] else ''}the NVSwitches, which is "
                f"{FABRIC_MODES[wanted]}, but FABRIC_MODE={fabric_mode}. Fix: set "
                f"FABRIC_MODE={wanted} in /usr/share/nvidia/nvswitch/fabricmanager.cfg "
                f"(fabricmanager_fabric_mode) and restart {SERVICE}")
    return causes


class FilterModule:
    def filters(self):
        return {
            "fabricmanager_packages": fabricmanager_packages,
            "fabricmanager_state": fabricmanager_state,
            "fabricmanager_wanted": fabricmanager_wanted,
            "fabricmanager_upstream_version": upstream_version,
        }
