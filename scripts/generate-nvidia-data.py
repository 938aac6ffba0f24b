#!/usr/bin/env python3
"""Regenerate gpuprov/data/nvidia/gpus.json and debian.json from Debian's archive.

    python3 scripts/generate-nvidia-data.py [--mirror http://deb.debian.org/debian]

Sources, all fetched from the archive with apt in a private directory (no root, nothing
installed, the machine's own apt state untouched):
- `nvidia-detect` of each Debian release below: /usr/share/nvidia/*.ids, one list of PCI ids per
  driver series Debian packages (nvidia.ids is the release's current driver);
- `pci.ids` (the newest release's): each NVIDIA device's name, whose chip prefix gives the
  architecture (GP108 is Pascal, GH100 is Hopper);
- the versions of the driver packages each release carries (apt-cache madison).
The hand-written tables beside them (architectures.yaml, cuda.yaml, distros.yaml) cite their
own sources. Run it again when Debian updates nvidia-detect or pci.ids, and review the diff.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from gpuprov.transport.apt_archive import COMPONENTS, PrivateApt

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "gpuprov" / "data" / "nvidia"
RELEASES = {"bookworm": "12", "trixie": "13"}  # codename -> VERSION_ID
PCI_IDS_FROM = "trixie"
# The driver packages whose versions the matcher reports, per release (absent ones are skipped).
PACKAGES = ("nvidia-driver", "nvidia-kernel-dkms", "nvidia-open-kernel-dkms", "nvidia-smi",
            "libcuda1", "nvidia-persistenced", "firmware-nvidia-gsp",
            "nvidia-tesla-535-driver", "nvidia-tesla-470-driver")
# Chip prefixes in pci.ids names, longest first; NVIDIA's architecture of each.
CHIP_ARCHITECTURES = (
    ("GB", "Blackwell"), ("GH", "Hopper"), ("AD", "Ada Lovelace"), ("GA", "Ampere"),
    ("TU", "Turing"), ("GV", "Volta"), ("GP", "Pascal"), ("GM", "Maxwell"), ("GK", "Kepler"),
    ("GF", "Fermi"), ("GT2", "Tesla"), ("G8", "Tesla"), ("G9", "Tesla"), ("G7", "Curie"),
    ("NV4", "Curie"), ("NV3", "Rankine"), ("NV2", "Kelvin"), ("NV1", "Celsius"),
    ("NV", "Fahrenheit"),  # NV4 (Riva TNT), NV5 (TNT2) and their kin
)
# A device of a GPU chip that is not the GPU itself (its HDMI audio, USB-C controller, ...).
NOT_A_GPU = re.compile(r"\b(Audio|USB|UCSI|SMBus|Serial Bus|Bridge|Controller)\b")


def fetch(work: Path, mirror: str) -> dict[str, dict[str, str]]:
    apt = PrivateApt(work, [f"deb {mirror} {codename} {COMPONENTS}" for codename in RELEASES])
    apt.update()
    versions: dict[str, dict[str, str]] = {codename: {} for codename in RELEASES}
    for package in (*PACKAGES, "nvidia-detect", "pci.ids"):
        for line in apt.run("madison", package).stdout.splitlines():
            name, version, source = (field.strip() for field in line.split("|"))
            codename = source.split()[1].split("/")[0]
            if codename in versions:
                versions[codename][name] = version
    for codename in RELEASES:
        wanted = [f"nvidia-detect={versions[codename]['nvidia-detect']}"]
        if codename == PCI_IDS_FROM:
            wanted.append(f"pci.ids={versions[codename]['pci.ids']}")
        apt.run("download", *wanted)
        for deb in work.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(work / codename)], check=True)
            deb.unlink()
    return versions


def id_lists(tree: Path) -> dict[str, set[str]]:
    """``nvidia-tesla-470.ids`` -> ``tesla-470``, ``nvidia.ids`` -> ``current``: its ids."""
    lists = {}
    for path in sorted((tree / "usr/share/nvidia").glob("*.ids")):
        name = "current" if path.stem == "nvidia" else path.stem.removeprefix("nvidia-")
        lists[name] = {f"{line[:4]}:{line[4:8]}".lower() for line in path.read_text().split()
                       if re.fullmatch(r"[0-9A-Fa-f]{8}", line)}
    return lists


def nvidia_devices(pci_ids: Path) -> dict[str, tuple[str, str]]:
    """PCI id -> (chip, product name) for NVIDIA's devices in pci.ids."""
    devices, in_nvidia = {}, False
    for line in pci_ids.read_text(encoding="utf-8", errors="replace").splitlines():
        if line and not line.startswith(("\t", "#")):
            in_nvidia = line.startswith("10de ")
        elif in_nvidia and (m := re.fullmatch(r"\t([0-9a-f]{4})  (.*)", line)):
            chip, _, name = m.group(2).partition(" [")
            devices[f"10de:{m.group(1)}"] = (chip.strip(), name.rstrip("]") or chip.strip())
    return devices


def architecture(chip: str) -> str | None:
    for prefix, arch in CHIP_ARCHITECTURES:
        # The next character is the chip's number: a digit, or hex for NV1A, NV1F, NV4E...
        if chip.startswith(prefix) and re.match(r"[0-9A-F]", chip[len(prefix):]):
            return arch
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuprov-nvidia-data-") as scratch:
        work = Path(scratch)
        versions = fetch(work, args.mirror)
        lists = {codename: id_lists(work / codename) for codename in RELEASES}
        names = nvidia_devices(work / PCI_IDS_FROM / "usr/share/misc/pci.ids")
    listed = set().union(*(ids for per in lists.values() for ids in per.values()))
    gpus = {}
    for pci_id in sorted(listed | set(names)):
        chip, name = names.get(pci_id, ("", ""))
        arch = architecture(chip)
        if pci_id not in listed and (arch is None or NOT_A_GPU.search(name)):
            continue  # not a GPU, or not one any driver lists
        gpus[pci_id] = {"name": name, "chip": chip, "architecture": arch, "debian": {
            codename: sorted(n for n, ids in per.items() if pci_id in ids)
            for codename, per in lists.items()}}
    OUT.mkdir(parents=True, exist_ok=True)
    sources = {
        "ids": {codename: f"nvidia-detect {versions[codename]['nvidia-detect']} of Debian "
                          f"{codename}" for codename in RELEASES},
        "names": f"pci.ids {versions[PCI_IDS_FROM]['pci.ids']} of Debian {PCI_IDS_FROM}",
    }
    # One device per line: a regenerated file reviews as a readable diff.
    lines = [f"  {json.dumps(pci_id)}: {json.dumps(entry)}" for pci_id, entry in gpus.items()]
    (OUT / "gpus.json").write_text(
        '{\n  "_generated_by": "scripts/generate-nvidia-data.py",\n'
        f'  "_sources": {json.dumps(sources)},\n' + ",\n".join(lines) + "\n}\n")
    debian = {"_generated_by": "scripts/generate-nvidia-data.py",
              "_source": "apt-cache madison against Debian's archive (main suites, no security "
                         "updates)",
              **{codename: {"version_id": version_id,
                            "packages": {p: versions[codename][p] for p in PACKAGES
                                         if p in versions[codename]}}
                 for codename, version_id in RELEASES.items()}}
    (OUT / "debian.json").write_text(json.dumps(debian, indent=2) + "\n")
    print(f"wrote {len(gpus)} GPUs to {OUT / 'gpus.json'} and {OUT / 'debian.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
