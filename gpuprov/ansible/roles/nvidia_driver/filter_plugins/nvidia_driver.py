"""What the nvidia_driver role reads from files/nvidia-driver-state.sh's output: the module, the
packages, the cards, and what is still wrong. Pure functions; they import nothing from Ansible
or gpuprov, so the role, gpuprov and the tests all load this file. ``gpuprov driver build``
reads DKMS with the same parser (gpuprov/plan/driver_build.py imports it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NO_DRIVER = "couldn't communicate with the NVIDIA driver"


@dataclass(frozen=True)
class DkmsModule:
    """One line of ``dkms status``."""

    name: str  # nvidia-current-open
    version: str  # 535.261.03
    kernel: str | None  # None for a module only added
    arch: str | None
    state: str  # added, built, installed or installed-weak
    note: str = ""  # what DKMS adds after it: "(WARNING! ...)", "from KERNEL"


# dkms 3 (do_status): "nvidia-current/535.261.03: added", "nvidia-current/535.261.03,
# 6.1.0-50-amd64, x86_64: installed (WARNING! Diff between built and installed module!)", and
# "nvidia-current, 535.261.03, 6.1.0-50-amd64, x86_64: installed-weak from 6.1.0-49-amd64";
# dkms 2 wrote "name, version, kernel, arch: state" for all of them.
_STATUS = re.compile(r"^(?P<name>[^,/\s]+)(?:/|, )(?P<version>[^,:\s]+)"
                     r"(?:, (?P<kernel>[^,\s]+), (?P<arch>[^:\s]+))?"
                     r": (?P<state>added|built|installed-weak|installed)(?![\w-])\s*(?P<note>.*)$")


def parse_dkms_status(text: str) -> list[DkmsModule]:
    """Every module ``dkms status`` lists; lines it does not recognise are not modules."""
    found = []
    for line in text.splitlines():
        if match := _STATUS.match(line.strip()):
            found.append(DkmsModule(match["name"], match["version"], match["kernel"],
                                    match["arch"], match["state"], match["note"].strip()))
    return found


def nvidia_driver_sections(text: str) -> dict[str, list[str]]:
    """The script's "== name" sections, each as its non-empty lines."""
    sections: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in (text or "").splitlines():
        if line.startswith("== "):
            lines = sections.setdefault(line[3:].strip(), [])
        elif line.strip():
            lines.append(line.strip())
    return sections


def nvidia_driver_state(text: str, version: str, kernel: str, pins: dict, packages: list,
                        hold_kernel_packages: list | None = None) -> dict:
    """The driver's state on a host, and each thing still wrong as a sentence that says what
    to do. ``pins``: package -> exact version; ``packages``: the ones asked for."""
    sections = nvidia_driver_sections(text)
    module_state = "missing"
    for module in parse_dkms_status("\n".join(sections.get("dkms", []))):
        if module.version == version and module.kernel == kernel \
                and module.state in ("built", "installed"):
            module_state = module.state
    installed = {}
    for line in sections.get("packages", []):
        fields = line.split()
        if len(fields) == 3 and fields[2] in ("ii", "hi"):
            installed[fields[0]] = fields[1]
    holds = set(sections.get("holds", []))
    cards = []
    for line in sections.get("cards", []):
        address, device, *driver = line.split()
        cards.append({"address": address, "device": device, "driver": driver[0] if driver else ""})
    loaded = (sections.get("loaded") or [""])[0] or None
    secure_boot = {"1": True, "0": False}.get((sections.get("secure-boot") or [""])[0])
    signer = " ".join(sections.get("signer", [])) if module_state != "missing" else ""
    mok, mok_note = None, ""
    if secure_boot and module_state == "installed" and signer:
        mok, mok_note = _mok_enrolment(signer, sections)
    smi = _nvidia_smi(sections.get("nvidia-smi"))

    problems = []
    missing = [p for p in packages if p not in installed]
    if missing:
        problems.append(f"not installed: {' '.join(missing)}")
    off_pin = sorted(p for p, v in pins.items() if p in installed and installed[p] != v)
    if off_pin:
        problems.append("not at their pinned versions: " + ", ".join(
            f"{p} {installed[p]} (pinned {pins[p]})" for p in off_pin))
    unheld = sorted((set(pins) | set(hold_kernel_packages or [])) & set(installed) - holds)
    if unheld:
        problems.append(f"not held (apt-mark hold them): {' '.join(unheld)}")
    if module_state != "installed":
        problems.append(f"DKMS has no {version} module installed for the running kernel "
                        f"{kernel} ({module_state}): install linux-headers-{kernel} and run "
                        f"dkms autoinstall -k {kernel}, or give a prebuilt module for it")
    if sections.get("no-autoinstall"):
        problems.append("/etc/dkms/no-autoinstall is left over, so DKMS builds nothing for new "
                        "kernels: remove it")
    if not sections.get("nouveau-blacklist"):
        problems.append("modprobe has no 'blacklist nouveau': nouveau may claim the card")
    bound = [c["address"] for c in cards if c["driver"] == "nouveau"]
    reboot_because = []
    if bound:
        reboot_because.append(f"nouveau drives {', '.join(bound)}")
    if loaded and loaded != version:
        reboot_because.append(f"NVIDIA module {loaded} is loaded, not {version}")
    if secure_boot and module_state == "installed" and not signer:
        problems.append("Secure Boot is on and the module is unsigned: the kernel will not "
                        "load it. Build it signed (gpuprov driver build --mok-key, --mok-cert) "
                        "and enroll the certificate (mokutil --import, then MokManager at boot)")
    if mok in ("pending", "not enrolled"):
        problems.append(mok_note)

    if not cards:
        gpu = ("no NVIDIA GPU on this host, so nothing loads the module: nvidia-smi says it "
               f"{_NO_DRIVER} (exit 9), as it does without one")
        if smi is not None and not (smi["exit"] == 9 and _NO_DRIVER in smi["output"]):
            problems.append(f"nvidia-smi, with no NVIDIA GPU here, exited {smi['exit']}: "
                            f"{smi['output'][:300]}")
    elif reboot_because:
        gpu = f"{len(cards)} NVIDIA GPU(s); a reboot is needed: {'; '.join(reboot_because)}"
    elif smi is None or smi["exit"] != 0:
        gpu = f"{len(cards)} NVIDIA GPU(s), but nvidia-smi does not answer"
        problems.append("nvidia-smi failed: " + (smi["output"][:300] if smi else "not installed"))
    elif set(smi["versions"]) != {version}:
        gpu = f"{len(cards)} NVIDIA GPU(s) on driver {', '.join(sorted(set(smi['versions'])))}"
        problems.append(f"nvidia-smi reports driver {', '.join(smi['versions'])}, not {version}")
    else:
        gpu = f"{len(cards)} NVIDIA GPU(s) on driver {version}"
    return {
        "module": module_state, "installed": installed, "cards": cards, "loaded": loaded,
        "secure_boot": secure_boot, "signer": signer, "mok": mok, "mok_note": mok_note,
        "nvidia_smi": smi, "gpu": gpu,
        "reboot_because": reboot_because, "problems": problems,
    }


# How a MOK enrolment is confirmed: only at the console, by shim's MokManager at the next boot.
_MOK_CONFIRM = ("reboot at the console and, when MokManager's blue screen asks (press a key "
                "before its countdown ends), choose \"Enroll MOK\", \"Continue\", \"Yes\", "
                "type the one-time password given to mokutil --import, then \"Reboot\"; "
                "afterwards mokutil --test-key CERT says \"CERT is already enrolled\"")
_MOK_CERT = ("the certificate the module was signed with, in DER form (DKMS's own is "
             "/var/lib/dkms/mok.pub; a module from gpuprov driver build was signed with the "
             "fleet's certificate given to --mok-cert)")


def _key_id(text: str) -> str:
    """A key id as modinfo or mokutil print it ("65:FB:AA:..", "1000"), comparable."""
    return re.sub(r"[\s:]", "", text).lower().lstrip("0")


def _mok_keys(lines: list[str] | None) -> set[str] | None:
    """The serial numbers in a mok-enrolled/mok-pending section; None when mokutil did not
    answer (missing, or no EFI variables to read)."""
    if not lines:
        return None
    return {_key_id(line) for line in lines if line != "none"}


def _mok_enrolment(signer: str, sections: dict[str, list[str]]) -> tuple[str, str]:
    """Whether the certificate that signed the module (its serial number, modinfo's sig_key) is
    in the MOK list, waits in the enrolment request, or neither; and what to do about it. The
    kernel refuses a module signed by a key it does not trust ("Key was rejected by service")."""
    serial = " ".join(sections.get("sig-key", []))
    key = _key_id(serial)
    enrolled = _mok_keys(sections.get("mok-enrolled"))
    pending = _mok_keys(sections.get("mok-pending"))
    if not key or enrolled is None:
        why = ("modinfo shows no signing key id" if not key else
               "mokutil is not installed or could not read the MOK list (apt-get install mokutil)")
        return "unknown", (f"Secure Boot is on and the module is signed by {signer}, but whether "
                           f"its key is enrolled is unknown: {why}. Unless that key is enrolled "
                           f"(mokutil --list-enrolled), the kernel will not load the module")
    if key in enrolled:
        return "enrolled", ""
    named = f"the module's signing key ({signer}, serial {serial})"
    if pending and key in pending:
        return "pending", (f"Secure Boot is on and {named} waits in the MOK enrolment request "
                           f"(mokutil --list-new): the kernel will not load the module until the "
                           f"enrolment is confirmed at the next boot: {_MOK_CONFIRM}. If the "
                           f"prompt was missed and mokutil --list-new no longer lists the key, "
                           f"import it again (mokutil --import CERT). CERT is {_MOK_CERT}")
    return "not enrolled", (f"Secure Boot is on and {named} is not enrolled in the MOK list: the "
                            f"kernel will not load the module. Enroll it, which needs a console: "
                            f"copy {_MOK_CERT} to the host as CERT, run mokutil --import CERT "
                            f"(it asks for a one-time password), then {_MOK_CONFIRM}")


def _nvidia_smi(lines: list[str] | None) -> dict | None:
    if not lines:
        return None
    exit_lines = [line for line in lines if re.fullmatch(r"exit \d+", line)]
    code = int(exit_lines[-1].split()[1]) if exit_lines else -1
    output = [line for line in lines if line not in exit_lines]
    versions = [line for line in output if re.fullmatch(r"\d+(\.\d+)+", line)]
    return {"exit": code, "versions": versions, "output": " ".join(output)}


def kernel_metapackages(kernel: str) -> list[str]:
    """The metapackages that would bring a newer kernel than ``kernel``, which the role holds
    with the driver: 6.1.0-50-amd64 -> linux-image-amd64, linux-headers-amd64."""
    flavour = re.sub(r"^[0-9.]+(-[0-9]+|\+deb[0-9]+)-", "", kernel)
    return [f"linux-image-{flavour}", f"linux-headers-{flavour}"]


class FilterModule:
    def filters(self):
        return {"nvidia_driver_state": nvidia_driver_state,
                "nvidia_driver_kernel_metapackages": kernel_metapackages}
