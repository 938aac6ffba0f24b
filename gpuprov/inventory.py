"""Inventory host names -> SSH targets, read by Ansible's own inventory code.

Any inventory ``ansible-playbook -i`` accepts works (YAML, INI, a directory, group_vars,
host_vars); the connection comes from the usual variables: ``ansible_host``, ``ansible_port``,
``ansible_user``, ``ansible_ssh_private_key_file``, and the known_hosts file from
``-o UserKnownHostsFile=...`` in ``ansible_ssh_common_args`` / ``ansible_ssh_extra_args`` (the
lab pins its host keys there), else ``~/.ssh/known_hosts``.
"""

from __future__ import annotations

import contextlib
import getpass
import shlex
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from gpuprov.errors import NotFoundError, UsageError
from gpuprov.transport.ssh import SshTarget

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")


def known_hosts_from_ssh_args(args: str) -> str | None:
    """The first file of ``-o UserKnownHostsFile=...`` (any spelling OpenSSH takes)."""
    try:
        words = shlex.split(args)
    except ValueError:
        words = args.split()
    options: list[str] = []
    for index, word in enumerate(words):
        if word == "-o" and index + 1 < len(words):
            options.append(words[index + 1])
        elif word.startswith("-o") and len(word) > 2:
            options.append(word[2:])
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            key, _, value = option.partition(" ")
        if key.strip().lower() == "userknownhostsfile" and value.strip():
            return value.split()[0]
    return None


def _first(variables: dict, *names: str):
    for name in names:
        value = variables.get(name)
        if value not in (None, ""):
            return value
    return None


def default_inventory() -> Path:
    from gpuprov.lab.hosts import Lab  # the lab's inventory, wherever GPUPROV_LAB_DIR puts it

    return Lab().inventory_file


class HostVars(Mapping):
    """A host's variables, each templated when read (an unused var may reference anything)."""

    def __init__(self, variables: dict, templar) -> None:
        self._variables = variables
        self._templar = templar

    def __getitem__(self, key: str):
        return self._templar.template(self._variables[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._variables)

    def __len__(self) -> int:
        return len(self._variables)


def host_vars(name: str, inventory: Path | None = None) -> HostVars:
    """Every variable of inventory host ``name`` (group_vars, host_vars, inline), templated.

    NotFoundError if the inventory or the host does not exist. Hypervisor backends read their
    API endpoints and credentials from here, so they can live in a vault like any Ansible var.
    """
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    inventory = inventory or default_inventory()
    with _LOCK:
        loader, manager = _parsed(inventory)
        host = manager.get_host(name)
        if host is None:
            raise _not_there("no host named", name, inventory, manager)
        variables = VariableManager(loader=loader, inventory=manager).get_vars(
            host=host, include_hostvars=False)
        return HostVars(variables, Templar(loader=loader, variables=variables))


# Ansible's inventory objects are neither cheap to build (about 0.15 s for a 32-host file) nor
# made for threads: one parse per inventory and process, used by one thread at a time.
_LOCK = threading.RLock()
_PARSED: dict[Path, tuple[tuple, object, object]] = {}


def _parsed(inventory: Path):
    """Ansible's (DataLoader, InventoryManager) for ``inventory``, parsed again only when one
    of its files changed. Call with _LOCK held."""
    if not inventory.exists():
        raise NotFoundError(
            f"inventory {inventory} does not exist",
            "pass an Ansible inventory with -i, or create lab hosts with: gpuprov lab up")
    # Ansible's inventory code is slow to import; only this module needs it.
    from ansible.parsing.dataloader import DataLoader

    key = inventory.absolute()
    stamp = _fingerprint(inventory)
    cached = _PARSED.get(key)
    if cached is None or cached[0] != stamp:
        loader = DataLoader()
        cached = _PARSED[key] = (stamp, loader, _read(inventory, loader))
    return cached[1], cached[2]


def _fingerprint(inventory: Path) -> tuple:
    paths = [inventory] if not inventory.is_dir() else sorted(
        p for p in inventory.rglob("*") if p.is_file())
    stamps = []
    for path in paths:
        stat = path.stat()
        stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


def hosts_matching(pattern: str, inventory: Path | None = None) -> list[str]:
    """The inventory hosts an Ansible host pattern names (``pve1``, ``gpu_hosts``, ``gpu*``,
    ``gpu_hosts:!pve3``), in inventory order, which is the order Ansible runs them in.

    NotFoundError if it names none; UsageError if the inventory does not parse."""
    inventory = inventory or default_inventory()
    from ansible.inventory import manager as ansible_inventory

    with _LOCK:
        _, manager = _parsed(inventory)
        # Ansible warns about a pattern that matches nothing; the error below says it better.
        with _replaced(ansible_inventory.display, "warning", lambda *args, **kwargs: None):
            names = [host.name for host in manager.list_hosts(pattern)]
    if not names:
        what = "no host named" if _is_one_name(pattern) else "no host matches"
        raise _not_there(what, pattern, inventory, manager)
    return names


def _not_there(what: str, pattern: str, inventory: Path, manager) -> NotFoundError:
    known = ", ".join(sorted(h for h in manager.hosts)) or "none"
    return NotFoundError(f"{what} {pattern!r} in the inventory {inventory}",
                         f"the hosts there are: {known}")


def _is_one_name(pattern: str) -> bool:
    return not any(c in pattern for c in ":,!&*?[~")


def _read(inventory: Path, loader):
    """Ansible's InventoryManager for ``inventory``; UsageError if no plugin could parse it.

    Ansible would only warn, and then find no host, and its warnings quote the lines it could
    not parse: for a vars file given by mistake, those may be secrets. So its inventory
    warnings are not printed; the error names the file and how to see Ansible's own reasons.
    """
    from ansible.inventory import manager as ansible_inventory

    class Manager(ansible_inventory.InventoryManager):
        def __init__(self, *args, **kwargs):
            self.any_parsed = False  # set before the base class parses the sources
            super().__init__(*args, **kwargs)

        def parse_source(self, source, cache=False):
            parsed = super().parse_source(source, cache=cache)
            self.any_parsed = self.any_parsed or parsed
            return parsed

    display = ansible_inventory.display
    with contextlib.ExitStack() as quiet:
        for method in ("warning", "error_as_warning"):
            quiet.enter_context(_replaced(display, method, lambda *args, **kwargs: None))
        manager = Manager(loader=loader, sources=[str(inventory)])
    if not manager.any_parsed:
        what = "any file in it" if inventory.is_dir() else "it"
        raise UsageError(
            f"{inventory} is not an Ansible inventory: no inventory plugin (YAML, INI, ...) "
            f"could parse {what}",
            f"see why with: ansible-inventory -i {inventory} --list; or pass the right file "
            "with -i")
    return manager


@contextlib.contextmanager
def _replaced(owner, attribute: str, value) -> Iterator[None]:
    old = getattr(owner, attribute)
    setattr(owner, attribute, value)
    try:
        yield
    finally:
        setattr(owner, attribute, old)


def resolve(name: str, inventory: Path | None = None) -> SshTarget:
    """The SSH target of inventory host ``name``; NotFoundError if there is no such host."""
    with _LOCK:  # templating uses the shared Ansible objects
        variables = host_vars(name, inventory)

        def var(*names: str):
            return _first(variables, *names)

        key_file = var("ansible_ssh_private_key_file", "ansible_private_key_file")
        ssh_args = " ".join(str(var(n) or "") for n in ("ansible_ssh_common_args",
                                                         "ansible_ssh_extra_args"))
        known_hosts = known_hosts_from_ssh_args(ssh_args)
        return SshTarget(
            host=str(var("ansible_host", "ansible_ssh_host") or name),
            port=int(var("ansible_port", "ansible_ssh_port") or 22),
            user=str(var("ansible_user", "ansible_ssh_user") or getpass.getuser()),
            key_file=Path(str(key_file)).expanduser() if key_file else None,
            known_hosts=Path(known_hosts or DEFAULT_KNOWN_HOSTS).expanduser(),
        )
