"""`gpuprov driver pins` against Debian's real archive, cross-checked by apt itself: with the
printed preferences file in place, apt resolves the driver's install, and every NVIDIA package
it would install is at the version gpuprov pinned. Needs deb.debian.org, as the lab image does."""

from __future__ import annotations

import json
import re

import pytest

from gpuprov.transport.apt_archive import PrivateApt


def _apt_installs(tmp_path, sources: list[str], preferences: str, packages: list[str]):
    """What `apt-get -s install` would install on an empty system, with ``preferences``."""
    apt = PrivateApt(tmp_path / "apt", sources)
    (apt.work / "preferences.d" / "gpuprov-nvidia").write_text(preferences)
    apt.update()
    result = apt.run("install", "--simulate", *packages, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return dict(re.findall(r"^Inst (\S+) \((\S+) ", result.stdout, re.MULTILINE))


@pytest.mark.parametrize("flavour", [["--modules", "open"], ["--headless"]])
def test_apt_installs_exactly_the_pinned_versions(run_gpuprov, tmp_path, flavour):
    planned = json.loads(run_gpuprov("driver", "pins", "--gpu", "10de:2330", *flavour,
                                     "--json").stdout)
    preferences = run_gpuprov("driver", "pins", "--gpu", "10de:2330", *flavour)
    assert preferences.stdout.startswith("# gpuprov driver pins: 10de:2330 (H100 SXM5 80GB)")
    assert "# why: " in preferences.stderr
    pins = planned["pins"]
    assert preferences.stdout.count("Pin-Priority: 1001") == len(pins)

    installs = _apt_installs(tmp_path, planned["sources"], preferences.stdout,
                             planned["packages"])
    assert set(planned["packages"]) <= set(installs)
    pinned = {name: version for name, version in installs.items() if name in pins}
    assert pinned == {name: pins[name] for name in pinned}
    # Every package of the driver's own version line that apt installs is pinned: nothing
    # of the driver can move on its own.
    driver_version = planned["driver_version"]
    assert {n for n, v in installs.items() if v.startswith(driver_version)} <= set(pins)


def test_other_distros_and_unknown_gpus_are_refused(run_gpuprov):
    # Ubuntu's archive cannot be read from here: its pins come from data, at a version given.
    ubuntu = run_gpuprov("driver", "pins", "--gpu", "10de:2330", "--distro", "ubuntu24.04",
                         check=False)
    assert ubuntu.returncode == 2, ubuntu.stderr
    assert "--distro ubuntu24.04 needs --version" in " ".join(ubuntu.stderr.split())
    other = run_gpuprov("driver", "pins", "--gpu", "10de:2330", "--distro", "fedora40",
                        check=False)
    assert other.returncode == 2, other.stderr
    assert "unknown distro 'fedora40'" in other.stderr
    unknown = run_gpuprov("driver", "pins", "--gpu", "10de:ffff", check=False)
    assert unknown.returncode == 3, unknown.stderr
    assert "Traceback" not in ubuntu.stderr + other.stderr + unknown.stderr


def test_a_mirror_password_is_never_printed(run_gpuprov):
    # apt logs in to a private mirror with user:password@ in its URL; deb.debian.org ignores
    # the login, so the plan succeeds and its header names the mirror, without the password.
    planned = run_gpuprov("driver", "pins", "--gpu", "10de:2330", "--mirror",
                          "http://fleet:s3cret-token@deb.debian.org/debian")
    assert "deb http://***@deb.debian.org/debian bookworm main" in planned.stdout
    # Nothing listens on port 9: the run exits 4 and says what failed, again without it.
    failed = run_gpuprov("driver", "pins", "--gpu", "10de:2330", "--mirror",
                         "http://fleet:s3cret-token@127.0.0.1:9/debian", "--security-mirror", "",
                         check=False)
    assert failed.returncode == 4, failed.stderr
    assert "the archive could not be read: W: Failed to fetch http://" in failed.stderr
    for result in (planned, failed):
        assert "s3cret-token" not in result.stdout + result.stderr
