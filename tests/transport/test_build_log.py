"""The build log of the image and module builds (gpuprov/transport/chroot.py), with real
commands: what a command prints is kept, and a mirror's user:password never is."""

from __future__ import annotations

import pytest

from gpuprov.errors import EnvironmentProblem, LabFailure
from gpuprov.transport.chroot import BuildLog

MIRROR = "http://fleet:s3cret-token@deb.example.org/debian"


def test_output_is_kept_and_credentials_are_not(tmp_path):
    log = BuildLog(tmp_path / "build.log", LabFailure, "image build", "install it")
    log.run(["sh", "-c", "echo I: Retrieving InRelease; echo warning >&2", "sh", MIRROR])
    with pytest.raises(LabFailure) as failed:
        # debootstrap prints the URL it failed on, with the login in it.
        log.run(["sh", "-c", f"echo E: Failed getting release file {MIRROR}/dists/x; exit 3",
                 MIRROR])
    text = (tmp_path / "build.log").read_text()
    assert "I: Retrieving InRelease\nwarning\n" in text
    assert "E: Failed getting release file http://***@deb.example.org/debian/dists/x" in text
    assert "exit 3" in failed.value.message and str(tmp_path) in failed.value.hint
    assert "s3cret" not in text + failed.value.message


def test_a_missing_program_names_itself_and_the_fix(tmp_path):
    log = BuildLog(tmp_path / "build.log", LabFailure, "module build", "run scripts/setup.sh")
    with pytest.raises(EnvironmentProblem) as missing:
        log.run(["gpuprov-no-such-program", MIRROR])
    assert "'gpuprov-no-such-program'" in missing.value.message
    assert missing.value.hint == "run scripts/setup.sh"
    assert "s3cret" not in (tmp_path / "build.log").read_text()
