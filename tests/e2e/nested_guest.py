"""A tiny nested guest for passthrough tests: it reports the PCI devices it sees, then powers off.

The guest runs *inside* a lab host (itself a QEMU guest), started by ``gpuprov vm passthrough``
with the lab host's vfio-bound stand-in GPU. It is booted by direct kernel boot:

* kernel: the lab host's own Debian kernel (``/boot/vmlinuz-*``). Everything the guest needs is
  built in (``CONFIG_PCI``, ``CONFIG_SERIAL_8250_CONSOLE``, ``CONFIG_RD_GZIP``, ``CONFIG_PROC_FS``,
  ``CONFIG_SYSFS``, ``CONFIG_DEVTMPFS``), so no modules and no kernel build;
* initrd: built here, on the machine running the tests, and cached next to the lab's image
  (``~/.cache/gpuprov`` or ``$GPUPROV_CACHE_DIR``) under a name keyed by its recipe: a gzip'd
  newc cpio (written in Python, no ``cpio`` binary) holding Debian's static busybox
  (``apt-get download busybox-static``) and an ``/init`` script.

``/init`` prints one ``GPUPROV-PCI <address> <vendor>:<device> class=<class>`` line per PCI
device (``GPUPROV-PCI 0000:01:00.0 1234:1111 class=030000``), then ``GPUPROV-DONE``, and powers
off. Tests read those lines back from the nested guest's serial console with ``parse_console``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import os
import re
import shlex
import stat
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gpuprov.lab.image import default_cache_dir
from gpuprov.lab.spec import recipe_hash
from gpuprov.transport import ssh

DONE = "GPUPROV-DONE"
BUSYBOX_PACKAGE = "busybox-static"
# The busybox applets /init uses, as symlinks in /bin (no `busybox --install`, which needs /proc).
APPLETS = ("sh", "mount", "cat", "echo", "sleep", "poweroff")
# console=ttyS0: the serial port the tests read; panic=-1: a dying /init reboots (libvirt can
# map that to destroy) instead of hanging; quiet: fewer kernel lines between ours, and every
# serial byte is slow under emulation inside emulation.
CMDLINE = "console=ttyS0 panic=-1 quiet"

INIT = r"""#!/bin/sh
# gpuprov nested guest: report every PCI device this guest sees, then power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

# /dev/console is wherever console= points; also write to the first serial port when it is
# not already one of the console's devices, so the lines reach ttyS0 either way.
serial=yes
for tty in $(cat /sys/class/tty/console/active 2>/dev/null); do
    [ "$tty" = ttyS0 ] && serial=
done
say() {
    echo "$*" >> /dev/console
    if [ -n "$serial" ] && [ -w /dev/ttyS0 ]; then
        echo "$*" >> /dev/ttyS0 2>/dev/null
    fi
}

for device in /sys/bus/pci/devices/*; do
    [ -r "$device/vendor" ] || continue
    read -r vendor < "$device/vendor"
    read -r id < "$device/device"
    read -r class < "$device/class"
    say "GPUPROV-PCI ${device##*/} ${vendor#0x}:${id#0x} class=${class#0x}"
done
say GPUPROV-DONE
poweroff -f
while :; do sleep 60; done
"""

_PCI_LINE = re.compile(
    r"GPUPROV-PCI ([0-9a-f]{4,}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) "
    r"([0-9a-f]{4}:[0-9a-f]{4}) class=([0-9a-f]{6})")


# -- reading the console (pure) -------------------------------------------------------------

def parse_console(text: str) -> list[tuple[str, str, str]]:
    """(address, vendor:device, class) of every ``GPUPROV-PCI`` line, in order, each once.

    Tolerates what serial logs carry: CR LF endings, firmware escape sequences and kernel
    messages before a line, and the same line printed twice (console and ttyS0).
    """
    found: list[tuple[str, str, str]] = []
    for match in _PCI_LINE.finditer(text):
        if match.groups() not in found:
            found.append(match.groups())
    return found


def finished(text: str) -> bool:
    """Whether the guest got to the end of its report."""
    return re.search(rf"(?m){DONE}\s*$", text) is not None


# -- the cpio writer ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One member of a newc archive; ``data`` is the file's bytes or the symlink's target."""
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def dir_entry(name: str) -> Entry:
    return Entry(name, stat.S_IFDIR | 0o755)


def file_entry(name: str, data: bytes, mode: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFREG | mode, data)


def symlink_entry(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def device_entry(name: str, major: int, minor: int, mode: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | mode, rdev=(major, minor))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def newc(entries: Iterable[Entry]) -> bytes:
    """A newc ("070701") cpio archive, owned by root, every time stamp 0: reproducible."""
    out = io.BytesIO()
    for inode, entry in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode() + b"\0"
        is_trailer = entry.name == "TRAILER!!!"
        fields = (0 if is_trailer else inode, entry.mode, 0, 0,
                  2 if stat.S_ISDIR(entry.mode) else 1, 0, len(entry.data), 0, 0,
                  *entry.rdev, len(name), 0)
        header = b"070701" + b"".join(b"%08x" % field for field in fields)
        out.write(header + name + _pad(len(header) + len(name)))
        out.write(entry.data + _pad(len(entry.data)))
    return out.getvalue()


def initramfs(busybox: bytes, init: str = INIT) -> bytes:
    """The nested guest's initrd: gzip'd newc with busybox, its applets and ``/init``."""
    entries = [dir_entry(d) for d in ("bin", "dev", "proc", "sys")]
    # The kernel opens /dev/console for /init before anything is mounted.
    entries += [device_entry("dev/console", 5, 1), device_entry("dev/ttyS0", 4, 64)]
    entries += [file_entry("bin/busybox", busybox)]
    entries += [symlink_entry(f"bin/{applet}", "busybox") for applet in APPLETS]
    entries += [file_entry("init", init.encode())]
    return gzip.compress(newc(entries), compresslevel=9, mtime=0)


# -- building and caching on this machine -----------------------------------------------------

def recipe() -> dict:
    return {"package": BUSYBOX_PACKAGE, "applets": list(APPLETS), "init": INIT, "format": 1}


def _run(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")


def _download_busybox(work: Path) -> bytes:
    """bin/busybox out of Debian's busybox-static package, fetched by apt from its mirror."""
    # As root, apt downloads as _apt, who cannot write into a private temporary directory.
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    _run(["apt-get", *sandbox, "download", "--quiet", BUSYBOX_PACKAGE], work)
    [deb] = work.glob(f"{BUSYBOX_PACKAGE}_*.deb")
    _run(["dpkg-deb", "-x", str(deb), str(work / "root")], work)
    return (work / "root/bin/busybox").read_bytes()


def build(cache_dir: Path | None = None) -> Path:
    """The nested guest's initrd, built once per recipe into the cache; returns its path."""
    cache = cache_dir or default_cache_dir()
    target = cache / f"nested-guest-{recipe_hash(recipe())}.cpio.gz"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".nested-guest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():  # built by whoever held the lock
            return target
        with tempfile.TemporaryDirectory(prefix="gpuprov-nested-") as work:
            payload = initramfs(_download_busybox(Path(work)))
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(payload)
        partial.rename(target)
    return target


# -- putting it on a lab host -----------------------------------------------------------------

def _version_key(name: str) -> list:
    return [(0, int(part)) if part.isdigit() else (1, part)
            for part in re.split(r"(\d+)", name)]


def newest_kernel(names: Iterable[str]) -> str | None:
    """The newest ``vmlinuz-*`` among ``/boot``'s file names, by version (pure)."""
    kernels = [n for n in names if n.startswith("vmlinuz-")]
    return max(kernels, key=lambda n: _version_key(n.removeprefix("vmlinuz-")), default=None)


def upload(target: ssh.SshTarget, directory: str) -> dict[str, str]:
    """Copy the initrd into ``directory`` on ``target`` (created if missing) over SFTP.

    Returns the ``-o`` options of ``gpuprov vm passthrough``'s direct kernel boot: ``kernel`` (the
    host's newest ``/boot/vmlinuz-*``), ``initrd`` (the uploaded file) and ``cmdline``.
    """
    local = build()
    remote_dir = PurePosixPath(directory)
    remote = remote_dir / local.name
    with contextlib.closing(ssh.connect(target)) as client:
        status, _, err = ssh.run(client, f"mkdir -p -- {shlex.quote(str(remote_dir))}", timeout=60)
        if status != 0:
            raise RuntimeError(f"mkdir -p {remote_dir} on {target.host_key_name}: {err.strip()}")
        with contextlib.closing(client.open_sftp()) as sftp:
            kernel = newest_kernel(sftp.listdir("/boot"))
            if kernel is None:
                raise RuntimeError(f"no /boot/vmlinuz-* on {target.host_key_name}")
            partial = f"{remote}.partial"
            sftp.put(str(local), partial)
            sftp.chmod(partial, 0o644)
            sftp.posix_rename(partial, str(remote))
    return {"kernel": f"/boot/{kernel}", "initrd": str(remote), "cmdline": CMDLINE}
