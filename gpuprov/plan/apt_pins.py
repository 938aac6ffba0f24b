"""Pin a Debian NVIDIA driver, and every package of its family, to one exact version: pure.

Why a whole family: Debian builds the driver from several source packages that move at
different times. Measured on bookworm with its security suite: the security update brought
``nvidia-driver`` and ``firmware-nvidia-gsp`` to 535.309.01, while ``nvidia-open-kernel-dkms``
(another source package) stayed at 535.261.03 and needs ``firmware-nvidia-gsp (= 535.261.03)``,
so a plain install of the open flavour is unsatisfiable. Pinning only some packages is no
better: apt then removes what it cannot keep consistent (``libcuda1``, or the kernel module on
the next ``full-upgrade``). So the plan pins every NVIDIA package the requested ones reach
through Depends, Pre-Depends and Recommends, at the newest driver version they all have, and
checks that each pinned package's dependencies on the others hold at their pinned versions.

Input is apt's own package records (``apt-cache show`` or a ``Packages`` index); output is an
apt preferences file (``/etc/apt/preferences.d/``), whose priority 1001 also moves a newer
installed version back to the pinned one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from gpuprov.errors import UsageError

PIN_PRIORITY = 1001
# Debian's NVIDIA source packages: nvidia-graphics-drivers(-tesla-NNN), nvidia-open-gpu-kernel-
# modules, nvidia-persistenced, nvidia-settings, nvidia-modprobe, nvidia-support, ...
FAMILY_SOURCE = re.compile(r"nvidia-")
_RELATION = re.compile(r"^\s*([a-z0-9][a-z0-9.+-]*)(?::[a-z0-9-]+)?\s*"
                       r"(?:\(\s*(<<|<=|=|>=|>>|<|>)\s*([^)\s]+)\s*\))?\s*$")


# -- Debian versions (deb-version(7), dpkg's verrevcmp) ---------------------------------------

def _order(char: str) -> int:
    if not char or char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    return -1 if char == "~" else ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            left, right = _order(a[i] if i < len(a) else ""), _order(b[j] if j < len(b) else "")
            if left != right:
                return left - right
            i, j = i + 1, j + 1
        start_i, start_j = i, j
        while i < len(a) and a[i].isdigit():
            i += 1
        while j < len(b) and b[j].isdigit():
            j += 1
        left, right = int(a[start_i:i] or 0), int(b[start_j:j] or 0)
        if left != right:
            return left - right
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0 or >0 as Debian version ``a`` sorts before, with or after ``b``."""
    (epoch_a, up_a, rev_a), (epoch_b, up_b, rev_b) = _split(a), _split(b)
    if epoch_a != epoch_b:
        return epoch_a - epoch_b
    return _compare_part(up_a, up_b) or _compare_part(rev_a, rev_b)


def upstream_version(version: str) -> str:
    """535.261.03 of 535.261.03-1, 1:2.0 of 1:2.0-3."""
    return _split(version)[1]


def _satisfies(version: str | None, operator: str | None, wanted: str | None) -> bool:
    if operator is None:
        return True
    if version is None:  # an unversioned Provides satisfies no versioned relation
        return False
    order = compare_versions(version, wanted)
    return {"=": order == 0, ">=": order >= 0, "<=": order <= 0, ">>": order > 0, ">": order > 0,
            "<<": order < 0, "<": order < 0}[operator]


# -- apt's records -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Relation:
    name: str
    operator: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.operator} {self.version})" if self.operator else self.name


@dataclass(frozen=True)
class Record:
    """One version of one binary package, as apt knows it."""

    package: str
    version: str
    source: str
    depends: tuple[tuple[Relation, ...], ...] = ()  # Pre-Depends and Depends: and of ors
    recommends: tuple[tuple[Relation, ...], ...] = ()
    provides: tuple[Relation, ...] = ()

    @property
    def family(self) -> bool:
        return bool(FAMILY_SOURCE.match(self.source))


def _relations(text: str) -> tuple[tuple[Relation, ...], ...]:
    groups = []
    for group in filter(None, (g.strip() for g in text.split(","))):
        alternatives = []
        for alternative in group.split("|"):
            alternative = re.sub(r"\[.*?\]|<.*?>", "", alternative)  # arch and profile lists
            if found := _RELATION.match(alternative):
                alternatives.append(Relation(*found.groups()))
        if alternatives:
            groups.append(tuple(alternatives))
    return tuple(groups)


def parse_records(text: str) -> list[Record]:
    """Every stanza of ``apt-cache show`` output or a Packages index that names the NVIDIA
    family (others are skipped unparsed: an index has tens of thousands)."""
    records = []
    for stanza in re.split(r"\n\s*\n", text):
        if "nvidia" not in stanza:
            continue
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" not in fields or "Version" not in fields:
            continue
        records.append(Record(
            package=fields["Package"], version=fields["Version"],
            source=fields.get("Source", fields["Package"]).split()[0],
            depends=_relations(", ".join(filter(None, (fields.get("Pre-Depends"),
                                                       fields.get("Depends"))))),
            recommends=_relations(fields.get("Recommends", "")),
            provides=tuple(a for group in _relations(fields.get("Provides", "")) for a in group),
        ))
    return records


# -- the plan ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PinPlan:
    driver_version: str  # the upstream version every driver package shares (535.261.03)
    pins: dict[str, str]  # package -> exact version
    why: list[str] = field(default_factory=list)

    def preferences(self, header: str = "") -> str:
        """The apt preferences file that holds every package of the plan at its version."""
        lines = [f"# {line}" for line in header.splitlines()]
        for package, version in sorted(self.pins.items()):
            lines += ["", f"Package: {package}", f"Pin: version {version}",
                      f"Pin-Priority: {PIN_PRIORITY}"]
        return "\n".join(lines).lstrip("\n") + "\n"

    def to_json(self) -> dict:
        return {"driver_version": self.driver_version, "pins": dict(sorted(self.pins.items())),
                "why": self.why}


_NEWEST_FIRST = functools.cmp_to_key(lambda a, b: compare_versions(b.version, a.version))
_UPSTREAM = functools.cmp_to_key(_compare_part)


class _Archive:
    def __init__(self, records: Iterable[Record]) -> None:
        self.versions: dict[str, list[Record]] = {}
        self.providers: dict[str, list[Record]] = {}
        for record in records:
            self.versions.setdefault(record.package, []).append(record)
            for provided in record.provides:
                self.providers.setdefault(provided.name, []).append(record)
        for versions in self.versions.values():
            versions.sort(key=_NEWEST_FIRST)

    def family_targets(self, relation: Relation) -> set[str]:
        """The NVIDIA packages that could satisfy ``relation``, directly or by Provides."""
        names = {r.package for r in self.versions.get(relation.name, ()) if r.family}
        names |= {r.package for r in self.providers.get(relation.name, ()) if r.family}
        return names

    def ours(self, relation: Relation) -> bool:
        """Whether only the family could satisfy ``relation``: it names NVIDIA packages, or an
        NVIDIA name nothing has (every record that mentions NVIDIA was read, so none exists)."""
        known = relation.name in self.versions or relation.name in self.providers
        return bool(self.family_targets(relation)) or ("nvidia" in relation.name and not known)

    def upstreams(self, name: str) -> set[str]:
        return {upstream_version(r.version) for r in self.versions[name]}


def _provides(record: Record, relation: Relation) -> bool:
    """Whether ``record`` satisfies ``relation``: by its own name and version, or a Provides."""
    if record.package == relation.name and \
            _satisfies(record.version, relation.operator, relation.version):
        return True
    return any(p.name == relation.name and _satisfies(p.version, relation.operator,
                                                      relation.version) for p in record.provides)


def _held(relation: Relation, pinned: dict[str, Record]) -> bool:
    """Whether a pinned package satisfies ``relation``."""
    return any(_provides(record, relation) for record in pinned.values())


def plan_pins(requested: list[str], records: Iterable[Record]) -> PinPlan:
    """Pin ``requested`` (the driver packages to install, as ``driver match`` lists them) and
    the NVIDIA packages they reach, at the newest driver version they share; UsageError if
    the archive's packages do not fit together at any."""
    archive = _Archive(records)
    if missing := [name for name in requested if name not in archive.versions]:
        raise UsageError(f"the archive has no {', '.join(missing)}",
                         "check the host's apt sources: Debian's driver is in non-free, the open "
                         "kernel modules in contrib, the GSP firmware in non-free-firmware")
    # The first package's versions are the driver's; a requested package with a version line
    # of its own (nvidia-persistenced) has none of them and is pinned at its newest.
    offered = archive.upstreams(requested[0])
    followers = [name for name in requested if archive.upstreams(name) & offered]
    shared = set.intersection(*(archive.upstreams(name) for name in followers))
    if not shared:
        listed = "; ".join(f"{name} {', '.join(r.version for r in archive.versions[name])}"
                           for name in followers)
        raise UsageError(f"no driver version is offered for all of {', '.join(followers)} "
                         f"({listed})", "add the suite that carries the missing versions")
    driver_version = max(shared, key=_UPSTREAM)
    pinned = {name: next((r for r in archive.versions[name]
                          if upstream_version(r.version) == driver_version),
                         archive.versions[name][0]) for name in requested}
    why = [f"{', '.join(followers)}: {driver_version} is the newest driver version all of "
           "them are offered at"]
    newest = max(set().union(*(archive.upstreams(name) for name in followers)), key=_UPSTREAM)
    if newest != driver_version:
        why.append(f"{newest} is not offered for every one of them, so it is held back")

    # What apt would add to them from the family, group by group as its resolver does: nothing
    # for a group a pinned package already satisfies (the open module Provides the kernel
    # module nvidia-driver asks for), else the first alternative. Each at the driver version
    # where it has it, else at its newest that fits (nvidia-support has versions of its own).
    queue = list(pinned.values())
    while queue:
        record = queue.pop(0)
        for group in (*record.depends, *record.recommends):
            if any(_held(r, pinned) for r in group):
                continue
            relation = group[0]
            fitting = [r for name in sorted(archive.family_targets(relation))
                       for r in archive.versions[name] if _provides(r, relation)]
            if not fitting:
                continue  # outside the family (dkms, libc6), or unsatisfiable: checked below
            chosen = next((r for r in fitting if upstream_version(r.version) == driver_version),
                          fitting[0])
            pinned[chosen.package] = chosen
            queue.append(chosen)

    # What apt will check: each pinned package's dependencies on the family hold among the pins.
    for record in pinned.values():
        for group in record.depends:
            if not all(archive.ours(r) for r in group):
                continue  # an alternative outside the family (dkms, libc6): apt's own choice
            if not any(_held(r, pinned) for r in group):
                family = set().union(*(archive.family_targets(r) for r in group))
                offered = ", ".join(f"{name} {r.version}" for name in sorted(family)
                                    for r in archive.versions[name]) or "nothing"
                raise UsageError(
                    f"{record.package} {record.version} needs {' | '.join(map(str, group))}, "
                    f"and the archive offers {offered}",
                    "the archive's NVIDIA packages do not fit together at one version; add "
                    "the suite that has the matching one, or choose another branch")
    why.append(f"{len(pinned)} packages pinned, every NVIDIA package these depend on or "
               "recommend: apt can neither mix versions nor remove one to upgrade another")
    return PinPlan(driver_version, {n: r.version for n, r in pinned.items()}, why)
