"""Proxmox VE's named parameter formats, for the schema validator.

The API schema (apidata.json) names a format for many parameters (``format: "pve-node"``) but
does not carry the format's definition: that lives in Perl (PVE::JSONSchema, qemu-server, ...).
This module re-implements the ones a VM/PCI workflow meets, with the checks and error wording
read from Proxmox's source, and derives the key grammar of hash-based formats (pve-qm-hostpci,
pve-vm-cpu-conf, ...) from the schema's own ``typetext``.

A named format that is neither implemented here nor has a key grammar in its typetext is
accepted unchecked (ApiSchema.unchecked_formats records which ones were met); everything else
the schema states about such a parameter (type, pattern, enum, ranges) is still enforced.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable


class FormatError(Exception):
    """A value does not match its named format; str() is PVE's message (without newline)."""


# --- helpers shared with schema.py ---------------------------------------------------------------


def split_list(text: str) -> list[str]:
    """PVE::Tools::split_list: NUL-separated if it contains NUL, else on commas, semicolons and
    whitespace; empty items dropped."""
    parts = text.split("\0") if "\0" in text else re.split(r"[,;\s]+", text)
    return [part.strip() for part in parts if part.strip()]


def parse_size(value: str) -> int | None:
    """PVE::JSONSchema::parse_size: '32G' -> bytes, None when it is not a size."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])?", value)
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2)
    scale = {None: 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]
    return int(number * scale)


def format_size(size: int) -> str:
    """PVE::JSONSchema::format_size: the largest unit that divides the byte count exactly."""
    for unit, scale in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if size % scale == 0 and size >= scale:
            return f"{size // scale}{unit}"
    return str(size)


# --- plain (code-ref) formats --------------------------------------------------------------------

CONFIGID_RE = r"[a-z][a-z0-9_-]+"
ID_RE = r"[a-z][a-z0-9\-_.]*[a-z0-9]"  # storage IDs and other parse_id() users
DNS_LABEL_RE = r"[a-zA-Z0-9](?:[a-zA-Z0-9\-]*[a-zA-Z0-9])?"
TAG_RE = r"[a-z0-9_][a-z0-9_\-+.]*"
VOLUME_ID_RE = rf"({ID_RE}):(.+)"
# qemu-server's NEW_DISK_RE: `[STORAGE:]SIZE_IN_GiB` asks for a new volume to be allocated.
NEW_DISK_RE = r"(?:([^/:\s]+):)?(\d+(?:\.\d+)?)"
HOTPLUG_FEATURES = {"network", "disk", "cpu", "memory", "usb", "cloudinit"}
STORAGE_CONTENT_TYPES = {"images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import"}


def _fullmatch(pattern: str, value: str, flags: int = 0) -> bool:
    return re.fullmatch(pattern, value, flags) is not None


def verify_configid(value: str) -> None:
    if not _fullmatch(CONFIGID_RE, value, re.I):
        raise FormatError(f"invalid configuration ID '{value}'")


def verify_storage_id(value: str) -> None:
    if not _fullmatch(ID_RE, value, re.I):
        raise FormatError(f"storage ID '{value}' contains illegal characters")


def verify_vmid(value: str) -> None:
    if not _fullmatch(r"[1-9][0-9]{2,8}", value):
        raise FormatError("value does not look like a valid VM ID")


def verify_node(value: str) -> None:
    if not _fullmatch(DNS_LABEL_RE, value):
        raise FormatError("value does not look like a valid node name")


def verify_bridge_id(value: str) -> None:
    if not _fullmatch(r"[-_.\w]+", value):
        raise FormatError(f"invalid bridge ID '{value}'")


def verify_mac_addr(value: str) -> None:
    # PVE refuses the I/G bit (multicast MACs): second hex digit must be even.
    if not _fullmatch(r"[a-f0-9][02468ace](?::[a-f0-9]{2}){5}", value, re.I):
        raise FormatError("value does not look like a valid unicast MAC address")


def verify_dns_name(value: str) -> None:
    if not _fullmatch(rf"(?:{DNS_LABEL_RE}\.)*{DNS_LABEL_RE}", value):
        raise FormatError("value does not look like a valid DNS name")


def verify_urlencoded(value: str) -> None:
    if not _fullmatch(r"[-%a-zA-Z0-9_.!~*'()]*", value):
        raise FormatError(f"invalid urlencoded string: {value}")


def verify_ipv4(value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise FormatError("value does not look like a valid IPv4 address") from None


def verify_ipv6(value: str) -> None:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        raise FormatError("value does not look like a valid IPv6 address") from None


def verify_ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise FormatError("value does not look like a valid IP address") from None


def _is_cidr(value: str, version: int, min_bits: int) -> bool:
    address, _, bits = value.partition("/")
    if not bits.isdigit():
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == version and min_bits < int(bits) <= ip.max_prefixlen


def verify_cidrv4(value: str) -> None:
    if not _is_cidr(value, 4, 7):
        raise FormatError("value does not look like a valid IPv4 CIDR network")


def verify_cidrv6(value: str) -> None:
    if not _is_cidr(value, 6, 7):
        raise FormatError("value does not look like a valid IPv6 CIDR network")


def verify_cidr(value: str) -> None:
    if not (_is_cidr(value, 4, 7) or _is_cidr(value, 6, 7)):
        raise FormatError("value does not look like a valid CIDR network")


def verify_address(value: str) -> None:
    try:
        verify_ip(value)
    except FormatError:
        try:
            verify_dns_name(value)
        except FormatError:
            raise FormatError(f"value does not look like a valid address: {value}") from None


def verify_ipv4_config(value: str) -> None:
    if value not in ("dhcp", "manual") and not _is_cidr(value, 4, 7):
        raise FormatError("value does not look like a valid ipv4 network configuration")


def verify_ipv6_config(value: str) -> None:
    if value not in ("auto", "dhcp", "manual") and not _is_cidr(value, 6, 7):
        raise FormatError("value does not look like a valid ipv6 network configuration")


def verify_disk_size(value: str) -> None:
    if parse_size(value) is None:
        raise FormatError(f"value does not look like a valid disk size: {value}")


def verify_tag(value: str) -> None:
    if not _fullmatch(TAG_RE, value, re.I):
        raise FormatError("invalid characters in tag")


def verify_volume_id(value: str) -> None:
    if not _fullmatch(VOLUME_ID_RE, value, re.I):
        raise FormatError(f"unable to parse volume ID '{value}'")


def verify_volume_id_or_qm_path(value: str) -> None:
    # qemu-server: 'none', 'cdrom', an absolute path, a volume ID or a new-disk request.
    if value in ("none", "cdrom") or value.startswith("/") or _fullmatch(NEW_DISK_RE, value):
        return
    verify_volume_id(value)


def verify_volume_id_or_absolute_path(value: str) -> None:
    if value.startswith("/"):
        return
    verify_volume_id(value)


def verify_startup_order(value: str) -> None:
    for part in value.split(","):
        if part.strip() and not re.fullmatch(r"(?:order=)?\d+|up=\d+|down=\d+", part):
            raise FormatError("unable to parse startup options")


def verify_hotplug_features(value: str) -> None:
    if value in ("0", "1"):
        return
    for feature in split_list(value):
        if feature not in HOTPLUG_FEATURES:
            raise FormatError(f"invalid hotplug feature '{feature}'")


def verify_storage_content(value: str) -> None:
    if value not in STORAGE_CONTENT_TYPES:
        raise FormatError(f"invalid content type '{value}'")


def verify_realm(value: str) -> None:
    if not _fullmatch(r"[A-Za-z][A-Za-z0-9.\-_]+", value):
        raise FormatError(f"value '{value}' does not look like a valid realm")


def verify_userid(value: str) -> None:
    if not _fullmatch(r"[^\s:/]+@[A-Za-z][A-Za-z0-9.\-_]+", value):
        raise FormatError(f"value '{value}' does not look like a valid user name")


def verify_poolid(value: str) -> None:
    if not _fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_\-]*(?:/[A-Za-z0-9_][A-Za-z0-9_\-]*)*", value):
        raise FormatError(f"invalid pool ID '{value}'")


def verify_cpuset(value: str) -> None:
    if not _fullmatch(r"\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*", value):
        raise FormatError(f"unable to parse cpuset '{value}'")


def verify_qm_bootdev(value: str) -> None:
    """qemu-server verify_bootdev: a disk, a NIC, a passed-through PCI or USB device."""
    if not re.fullmatch(r"(?:ide\d|sata\d|scsi\d{1,2}|virtio\d{1,2}|net\d+|hostpci\d+|usb\d+)",
                        value):
        raise FormatError(f"invalid boot device '{value}'")


def verify_phys_bits(value: str) -> None:
    # qemu-server CPUConfig 'pve-phys-bits': 8 to 64, or 'host'.
    if value != "host" and not (value.isdigit() and 8 <= int(value) <= 64):
        raise FormatError(f"invalid phys-bits value '{value}'")


def verify_iface(value: str) -> None:
    if not _fullmatch(r"[a-z][a-z0-9_]{1,20}(?:[:.]\d+)?", value, re.I):
        raise FormatError(f"invalid network interface name '{value}'")


IPV4_NETMASKS = {str(ipaddress.IPv4Network(f"0.0.0.0/{bits}").netmask) for bits in range(33)}


def verify_ipv4mask(value: str) -> None:
    if value not in IPV4_NETMASKS:
        raise FormatError("value does not look like a valid IP netmask")


def verify_task_status_type(value: str) -> None:
    if not _fullmatch(r"ok|error|warning|unknown", value, re.I):
        raise FormatError(f"invalid status '{value}'")


def accept_anything(_value: str) -> None:
    """The 'string' format and the ones only meaningful to Proxmox's own tooling."""


PLAIN_FORMATS: dict[str, Callable[[str], None]] = {
    "string": accept_anything,
    "pve-configid": verify_configid,
    "pve-storage-id": verify_storage_id,
    "pve-vmid": verify_vmid,
    "pve-node": verify_node,
    "pve-bridge-id": verify_bridge_id,
    "mac-addr": verify_mac_addr,
    "dns-name": verify_dns_name,
    "urlencoded": verify_urlencoded,
    "ipv4": verify_ipv4,
    "ipv6": verify_ipv6,
    "ip": verify_ip,
    "CIDR": verify_cidr,
    "CIDRv4": verify_cidrv4,
    "CIDRv6": verify_cidrv6,
    "address": verify_address,
    "pve-ipv4-config": verify_ipv4_config,
    "pve-ipv6-config": verify_ipv6_config,
    "disk-size": verify_disk_size,
    "pve-tag": verify_tag,
    "pve-volume-id": verify_volume_id,
    "pve-volume-id-or-qm-path": verify_volume_id_or_qm_path,
    "pve-volume-id-or-absolute-path": verify_volume_id_or_absolute_path,
    "pve-startup-order": verify_startup_order,
    "pve-hotplug-features": verify_hotplug_features,
    "pve-storage-content": verify_storage_content,
    "pve-realm": verify_realm,
    "pve-userid": verify_userid,
    "pve-poolid": verify_poolid,
    "pve-cpuset": verify_cpuset,
    "pve-qm-bootdev": verify_qm_bootdev,
    "pve-phys-bits": verify_phys_bits,
    "pve-iface": verify_iface,
    "ipv4mask": verify_ipv4mask,
    "pve-task-status-type": verify_task_status_type,
}


def plain_format(name: str) -> Callable[[str], None] | None:
    """The checker for a named non-hash format, honouring PVE's '-list' and '-opt' suffixes."""
    if name in PLAIN_FORMATS:
        return PLAIN_FORMATS[name]
    base, _, kind = name.rpartition("-")
    if kind == "list" and base in PLAIN_FORMATS:
        check = PLAIN_FORMATS[base]

        def check_list(value: str) -> None:
            for item in split_list(value):
                check(item)

        return check_list
    if kind == "opt" and base in PLAIN_FORMATS:
        check = PLAIN_FORMATS[base]
        return lambda value: check(value) if value else None
    return None


# --- hash-based named formats: key grammar from typetext, value rules from the source ------------

HOSTPCI_ID_RE = r"(?:[a-f0-9]{4,}:)?[a-f0-9]{2}:[a-f0-9]{2}(?:\.[a-f0-9])?"
HEX_ID_RE = r"^0x[0-9a-fA-F]{4}$"

# Per-key rules the typetext cannot express, copied from the Perl definitions (qemu-server
# PCI.pm's $hostpci_fmt, CPUConfig.pm's $cpu_fmt, QemuServer.pm's boot/watchdog formats).
NAMED_FORMAT_RULES: dict[str, dict[str, dict]] = {
    "pve-qm-hostpci": {
        "host": {"pattern": rf"{HOSTPCI_ID_RE}(;{HOSTPCI_ID_RE})*"},
        "mapping": {"format": "pve-configid"},
        "mdev": {"pattern": r"[^/\.:]+"},
        "romfile": {"pattern": r"[^,;]+"},
        "vendor-id": {"pattern": HEX_ID_RE},
        "device-id": {"pattern": HEX_ID_RE},
        "sub-vendor-id": {"pattern": HEX_ID_RE},
        "sub-device-id": {"pattern": HEX_ID_RE},
    },
    "pve-vm-cpu-conf": {
        "cputype": {"pattern": r"[a-zA-Z0-9\-_.+]+|custom-[a-zA-Z0-9\-_.]+"},
        "flags": {"pattern": r"[+-][a-zA-Z0-9\-_.]+(;[+-][a-zA-Z0-9\-_.]+)*"},
        "hv-vendor-id": {"pattern": r"[a-zA-Z0-9]{1,12}"},
        "phys-bits": {"type": "string", "format": "pve-phys-bits", "enum": None},
        "guest-phys-bits": {"minimum": 32, "maximum": 64},
        "reported-model": {"enum": None},  # a long list of CPU models; not in the schema
    },
    "pve-qm-boot": {
        "legacy": {"pattern": r"[acdn]{1,4}"},
        "order": {"format": "pve-qm-bootdev-list"},
    },
    "pve-qm-watchdog": {"action": {"enum": ["reset", "shutdown", "poweroff", "pause", "debug",
                                            "none"]}},
}


class TypetextError(ValueError):
    """The typetext is not a key grammar (e.g. '<string>'), so the format stays unchecked."""


_TOKEN_RE = re.compile(
    r"(?P<opt>\[)?,?(?P<defkey>\[)?(?P<key>[A-Za-z0-9_.-]+)=(?(defkey)\])"
    r"<(?P<value>.*)>(?(opt)\])"
)


def _split_typetext(typetext: str) -> list[str]:
    """Split on spaces that are not inside <...>."""
    tokens, depth, current = [], 0, ""
    for char in typetext.strip():
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        if char == " " and depth == 0:
            if current:
                tokens.append(current)
            current = ""
        else:
            current += char
    if current:
        tokens.append(current)
    return tokens


def _value_schema(value_text: str) -> dict:
    if value_text == "1|0":
        return {"type": "boolean"}
    if value_text in ("integer", "number"):
        return {"type": value_text}
    if "|" in value_text and re.fullmatch(r"[\w./-]+(\|[\w./-]+)+", value_text):
        return {"type": "string", "enum": value_text.split("|")}
    return {"type": "string"}


def format_from_typetext(name: str, typetext: str) -> dict:
    """Turn '[[host=]<ID>] [,pcie=<1|0>] ,attestation=<1|0>' into a property-string format dict
    like PVE's Perl hashes: per key type/enum/optional, default_key for '[key=]'."""
    tokens = _split_typetext(typetext)
    if not tokens:
        raise TypetextError(typetext)
    result: dict[str, dict] = {}
    for token in tokens:
        match = _TOKEN_RE.fullmatch(token)
        if not match:
            raise TypetextError(typetext)
        schema = _value_schema(match.group("value"))
        if match.group("opt"):
            schema["optional"] = 1
        if match.group("defkey"):
            schema["default_key"] = 1
        result[match.group("key")] = schema
    for key, rules in NAMED_FORMAT_RULES.get(name, {}).items():
        schema = result.setdefault(key, {"type": "string", "optional": 1})
        for rule, value in rules.items():
            if value is None:
                schema.pop(rule, None)
            else:
                schema[rule] = value
    return result
