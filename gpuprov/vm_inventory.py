"""The inventory of VMs that ``vm passthrough`` made or gave a card to, for the next stages.

A standard Ansible YAML inventory, one group ``gpuprov_vms``, one host per VM: its address
(``ansible_host``), its SSH user, and where it runs (hypervisor, host, VM id, the card). A
later ``gpuprov host inspect NAME -i FILE`` or ``ansible-playbook -i FILE`` takes it as any
other host. gpuprov manages the file (default ``$XDG_STATE_HOME/gpuprov/vms.yml``;
``--inventory-out`` for another): a VM recorded again replaces its own entry, and every other
host in the file stays as it was.

A VM's address is often unknown when it is made (no guest OS yet, no guest agent): then
nothing is written, and the exact entry to add is printed instead.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import yaml

from gpuprov.errors import UsageError

GROUP = "gpuprov_vms"
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_HEADER = ("# Managed by gpuprov (vm passthrough): the VMs it gave a card to, as targets for\n"
           "# the next stages. An entry is replaced when its VM is recorded again; other\n"
           "# hosts and groups in this file are kept.\n")


def default_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local/state"
    return Path(base) / "gpuprov" / "vms.yml"


def check_address(text: str) -> str:
    """An IP address or a DNS name; anything else is bad input."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if _HOSTNAME.fullmatch(text) and not text.replace(".", "").isdigit():
            return text
    raise UsageError(f"--address {text!r} is neither an IP address nor a DNS name",
                     "give the VM's address, for example --address 192.0.2.10 or "
                     "--address gpu-vm1.lab.example")


def check_user(text: str) -> str:
    if not _USER.fullmatch(text):
        raise UsageError(f"--ssh-user {text!r} is not a Linux user name",
                         "give the user the VM's SSH accepts, for example --ssh-user debian")
    return text


def host_name(vm_name: str) -> str:
    """The VM's name as an inventory host name (spaces and odd characters become -)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", vm_name).strip("-") or "vm"


def host_vars(*, address: str | None, user: str, hypervisor: str, host: str, vm_id: str,
              devices: list[str]) -> dict:
    entry = {"ansible_host": address} if address else {}
    entry.update({"ansible_user": user, "gpuprov_hypervisor": hypervisor,
                  "gpuprov_hypervisor_host": host, "gpuprov_vm_id": str(vm_id),
                  "gpuprov_vm_devices": list(devices)})
    return entry


def parse(text: str | None, path: Path) -> dict:
    """The managed file's document; bad content is a usage error that names the file."""
    if not text or not text.strip():
        return {}
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(f"{path} is not a YAML inventory{where}",
                         "fix or move it, or give another file with --inventory-out") from None
    if not isinstance(document, dict) or not isinstance(document.get("all", {}), dict):
        raise UsageError(f"{path} is not a YAML inventory (no mapping at its top, or 'all' is "
                         "not one)",
                         "give a YAML inventory, or a new file, with --inventory-out")
    return document


def merged(document: dict, name: str, variables: dict) -> str:
    """``document`` with ``name`` recorded in group gpuprov_vms (its old entry replaced)."""
    node = document
    for key in ("all", "children", GROUP, "hosts"):  # each level made, or kept as it is
        node[key] = node.get(key) or {}
        node = node[key]
    node[name] = variables
    return _HEADER + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def entry_text(name: str, variables: dict) -> str:
    """The YAML to add to an inventory by hand, ansible_host left for the user to fill in."""
    shown = {"ansible_host": "ADDRESS", **variables}
    return yaml.safe_dump({GROUP: {"hosts": {name: shown}}}, sort_keys=False,
                          default_flow_style=False)


def read(path: Path) -> dict:
    """Read and check the managed file before anything changes (a missing file is empty)."""
    if path.is_dir():
        raise UsageError(f"--inventory-out {path} is a directory",
                         "give a file path, for example --inventory-out inventories/vms.yml")
    try:
        text = path.read_text() if path.exists() else None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {path}: {error}",
                         "give a readable YAML file with --inventory-out") from None
    # The file is written once the VM has its card: find out now that it could not be.
    # It is replaced through a file beside it, so its directory (or the first that exists) must
    # be writable.
    directory = next(p for p in path.parents if p.exists())
    if not os.access(directory, os.W_OK):
        raise UsageError(f"cannot write {path}: {directory} is not writable",
                         "give a writable path with --inventory-out")
    return parse(text, path)


def write(path: Path, text: str) -> None:
    """Replace the file in one step; the previous version is kept as FILE.bak."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.chmod(0o600)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".bak"))
    os.replace(temporary, path)
