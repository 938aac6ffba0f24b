"""`gpuprov driver build` for real: a bookworm chroot from Debian's archive, the real
nvidia-open-kernel-dkms compiled by DKMS for the archive's current kernel, signed with a fleet
key made here, packed by `dkms mktarball --binaries-only`. openssl, not gpuprov, then checks
every module's signature against the fleet's certificate. Needs root and deb.debian.org, as the
lab image does; about 2.5 minutes on two cores (debootstrap 40 s, packages 60 s, compile).

The build uses the machine's cache, as `driver build` does: its base chroot (a debootstrap, kept
per distro and mirror) may already be there. The module is always built: each run signs with
a new key, and the cache names a tarball by its certificate. The test removes its tarball."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from gpuprov.plan.driver_build import MODULE_SIGNATURE_MAGIC
from gpuprov.transport.apt_archive import PrivateApt

MIRROR = "http://deb.debian.org/debian"


@pytest.fixture(scope="module")
def current_kernel(tmp_path_factory) -> str:
    """The kernel ABI bookworm's linux-headers-amd64 points to now: what a new node runs."""
    apt = PrivateApt(tmp_path_factory.mktemp("apt"), [f"deb {MIRROR} bookworm main"])
    apt.update()
    shown = apt.run("show", "--no-all-versions", "linux-headers-amd64").stdout
    return re.search(r"^Depends: linux-headers-(\S+)", shown, re.MULTILINE)[1]


@pytest.fixture(scope="module")
def fleet_key(tmp_path_factory):
    keys = tmp_path_factory.mktemp("mok")
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "3650", "-subj", "/CN=gpuprov test fleet MOK/", "-outform", "DER",
                    "-keyout", str(keys / "mok.key"), "-out", str(keys / "mok.der")],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(keys / "mok.der"),
                    "-out", str(keys / "mok.pem")], check=True)
    return keys


def _signature_verifies(module: bytes, cert_pem, scratch) -> bool:
    """openssl's verdict on a module's appended PKCS#7 signature (the layout sign-file writes:
    content, signature, struct module_signature, magic)."""
    assert module.endswith(MODULE_SIGNATURE_MAGIC)
    info = module[-len(MODULE_SIGNATURE_MAGIC) - 12:-len(MODULE_SIGNATURE_MAGIC)]
    [signature_length] = struct.unpack(">I", info[8:])
    end = len(module) - len(MODULE_SIGNATURE_MAGIC) - 12
    (scratch / "content").write_bytes(module[:end - signature_length])
    (scratch / "signature").write_bytes(module[end - signature_length:end])
    result = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER",
                             "-in", str(scratch / "signature"), "-content",
                             str(scratch / "content"), "-certfile", str(cert_pem), "-nointern",
                             "-noverify", "-out", "/dev/null"], capture_output=True, text=True)
    return result.returncode == 0


@pytest.fixture
def built_tarballs():
    made = []
    yield made
    for path in made:
        Path(path).unlink(missing_ok=True)


def test_a_signed_module_is_built_for_the_kernel_and_then_cached(run_gpuprov, tmp_path,
                                                                  current_kernel, fleet_key,
                                                                  built_tarballs):
    argv = ("driver", "build", "--gpu", "10de:2330", "--modules", "open", "--kernel",
            current_kernel, "--mok-key", str(fleet_key / "mok.key"), "--mok-cert",
            str(fleet_key / "mok.der"), "--json")
    built = json.loads(run_gpuprov(*argv, timeout=1500).stdout)
    built_tarballs.append(built["tarball"])
    assert built["cached"] is False and built["signed"] is True
    assert built["package"] == "nvidia-open-kernel-dkms"
    assert built["version"] == built["pins"]["nvidia-open-kernel-dkms"]
    assert built["dkms_name"] == "nvidia-current-open"

    with tarfile.open(built["tarball"]) as tar:
        names = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        prefix = f"dkms_main_tree/{current_kernel}/x86_64/module/"
        modules = sorted(n.removeprefix(prefix) for n in names if n.startswith(prefix))
        assert modules == sorted(built["kernel_modules"])
        assert "nvidia-current-open.ko" in modules and "nvidia-current-open-uvm.ko" in modules
        for name in modules:
            data = tar.extractfile(names[prefix + name]).read()
            assert f"vermagic={current_kernel} SMP".encode() in data, name
            assert _signature_verifies(data, fleet_key / "mok.pem", tmp_path), name
        # The key signed the modules and stayed out of what the fleet gets.
        key = (fleet_key / "mok.key").read_bytes()
        assert not any(key.split(b"\n")[1] in tar.extractfile(m).read()
                       for m in tar.getmembers() if m.isfile())
    assert not list(Path(built["tarball"]).parent.glob("work-*")), "the build chroot was left"

    again = run_gpuprov(*argv[:-1], "--out", str(tmp_path / "out"), timeout=300)
    assert "found in the cache, signed" in again.stdout
    assert (tmp_path / "out" / built["tarball"].rsplit("/", 1)[1]).is_file()
    assert "dkms ldtarball" in again.stdout


def test_bad_requests_are_refused_before_anything_is_built(run_gpuprov, tmp_path, fleet_key):
    env = {"GPUPROV_CACHE_DIR": str(tmp_path / "cache")}
    half_key = run_gpuprov("driver", "build", "--gpu", "10de:2330", "--kernel", "6.1.0-50-amd64",
                           "--mok-key", str(fleet_key / "mok.key"), env=env, check=False)
    assert half_key.returncode == 2 and "both --mok-key and --mok-cert" in half_key.stderr
    bogus = run_gpuprov("driver", "build", "--gpu", "10de:2330", "--kernel", "6.1.0-50", env=env,
                        check=False)
    assert bogus.returncode == 2 and "not a Debian kernel release" in bogus.stderr
    gone = run_gpuprov("driver", "build", "--gpu", "10de:2330", "--kernel", "6.1.0-2-amd64",
                       env=env, check=False)
    assert gone.returncode == 3, gone.stderr
    assert "linux-headers-6.1.0-2-amd64 is not in these apt sources" in " ".join(
        gone.stderr.split())
    for result in (half_key, bogus, gone):
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()
