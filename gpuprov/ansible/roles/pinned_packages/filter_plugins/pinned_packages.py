"""What the pinned_packages role and the roles that include it decide: which build of each
package to take from what ``apt-cache madison`` lists, what the package database has, and what
must be installed. Pure functions; they import nothing from Ansible or gpuprov, so the roles,
gpuprov and the tests all load this file.
"""

from __future__ import annotations


def upstream_version(version: str) -> str:
    """A Debian version without its epoch and revision: 1:535.261.03-1~deb12u1 -> 535.261.03."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def parse_madison(text: str) -> dict[str, list[str]]:
    """``apt-cache madison PKG...``: every version each package has in the repositories,
    in apt's order (newest first), each once."""
    found: dict[str, list[str]] = {}
    for line in (text or "").splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) >= 3 and fields[0] and fields[1]:
            versions = found.setdefault(fields[0], [])
            if fields[1] not in versions:
                versions.append(fields[1])
    return found


def pinned_packages_choose(madison: str, wanted: dict) -> dict:
    """The build of each package to pin, from what the repositories have. ``wanted`` maps each
    package to a version: a full Debian version is taken as it is, an upstream version
    (535.261.03) takes its newest build, and an empty one the newest version. ``error`` names
    each package the repositories lack at that version, with what they have."""
    available = parse_madison(madison)
    pins, missing = {}, []
    for package, version in wanted.items():
        versions = available.get(package, [])
        if not version:
            matching = versions[:1]
        elif "-" in version.split(":", 1)[-1]:
            matching = [v for v in versions if v == version]
        else:
            matching = [v for v in versions if upstream_version(v) == upstream_version(version)]
        if matching:
            pins[package] = matching[0]
        else:
            missing.append(f"{package} {version or ''}".strip() + " (the repositories have "
                           f"{', '.join(versions) if versions else 'no version of it'})")
    return {"pins": pins, "error": "no build of " + "; ".join(missing) if missing else ""}


def pinned_packages_installed(dpkg_query: str) -> dict[str, str]:
    """``dpkg-query --show --showformat='${Package} ${Version} ${db:Status-Abbrev}\\n'``: the
    installed packages ("ii", or "hi" when held) and their versions."""
    installed = {}
    for line in (dpkg_query or "").splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2] in ("ii", "hi"):
            installed[fields[0]] = fields[1]
    return installed


def pinned_packages_to_install(pins: dict, installed: dict) -> list[str]:
    """``package=version`` for each pinned package that is missing or at another version."""
    return [f"{package}={version}" for package, version in sorted(pins.items())
            if installed.get(package) != version]


class FilterModule:
    def filters(self):
        return {
            "pinned_packages_choose": pinned_packages_choose,
            "pinned_packages_installed": pinned_packages_installed,
            "pinned_packages_to_install": pinned_packages_to_install,
        }
