"""Build and cache the lab's Debian bookworm disk images, from Debian's archive only.

Two stages, each cached under the image cache (``~/.cache/gpuprov`` or ``$GPUPROV_CACHE_DIR``):

1. one root file system per recipe: debootstrap, the lab's guest files, and the boot loaders'
   packages downloaded (not installed), so both variants share one debootstrap;
2. one raw GPT disk per boot variant (grub, systemd-boot): the root copied, that variant's boot
   loader installed and set up, then an ESP (mtools) and an ext4 root (``mke2fs -d``) written
   straight into the disk file, so no loop devices, partition scanning or vfat driver are needed.

Hosts boot from qcow2 overlays on these images, so an image is never written once built.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import jinja2

from gpuprov.errors import EnvironmentProblem, LabFailure
from gpuprov.lab.locking import exclusive
from gpuprov.lab.spec import GIB, MIB, disk_layout, recipe_hash
from gpuprov.transport.apt_archive import redact
from gpuprov.transport.chroot import BuildLog, remove_tree
from gpuprov.transport.chroot import chroot as in_chroot

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "linux-image-amd64", "initramfs-tools", "zstd", "kmod", "udev", "systemd-sysv", "dbus",
    "openssh-server", "python3", "sudo", "ca-certificates", "pciutils", "iproute2", "procps",
)
BOOTLOADER_PACKAGES = {"grub": ("grub-efi-amd64",), "systemd-boot": ("systemd-boot",)}
# The serial console keeps every host's boot log. no_timer_check: under software emulation on
# a busy machine the kernel's early IO-APIC timer test can miss its window, and with interrupt
# remapping on (our vIOMMU) it then panics ("timer doesn't work through Interrupt-remapped
# IO-APIC"), as measured in CI with four hosts booting at once. mitigations=off: the emulated
# CPU checks every access before it makes it, so there is no speculation for page-table
# isolation and retpolines to guard against, and page-table isolation flushes the emulated
# TLB at every system call (no PCID under TCG). Measured in a lab host: a process start 26 ms
# instead of 35, a Python start 0.15 s instead of 0.25-0.35, an fsync'ed write 41 ms instead
# of 57, update-initramfs 73 s instead of 88. All of them stay on the command line through
# update-grub and the roles' edits, like the console a real server's admin sets.
LAB_CMDLINE = "console=ttyS0,115200 no_timer_check mitigations=off"
# "quiet" is Debian's stock default (GRUB_CMDLINE_LINUX_DEFAULT).
KERNEL_CMDLINE = f"{LAB_CMDLINE} quiet"
DISK_SIZE = 8 * GIB
ESP_SIZE = 256 * MIB
ROOT_LABEL = "gpuprov-root"
# The disk space one image build needs at its peak (root copy + sparse disk contents).
BUILD_SPACE = 5 * GIB
# Bump when the build steps change in a way the recipe below does not capture.
BUILDER_VERSION = 3
GRUB_MODULES = (
    "part_gpt", "fat", "ext2", "normal", "configfile", "search", "search_fs_uuid", "linux",
    "gzio", "echo", "test", "serial", "terminal", "all_video", "efi_gop", "reboot", "halt",
)

Report = Callable[[str], None]


def default_cache_dir() -> Path:
    if env := os.environ.get("GPUPROV_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpuprov"


def _guest_file(name: str) -> str:
    return resources.files("gpuprov.lab").joinpath("guest").joinpath(name).read_text()


def _render(name: str, **values: str) -> str:
    return jinja2.Template(_guest_file(name), undefined=jinja2.StrictUndefined).render(**values)


_GUEST_FILES = (
    "gpuprov-lab-firstboot", "gpuprov-lab-firstboot.service", "20-lab-dhcp.network",
    "grub.cfg.j2", "grub-early.cfg.j2",
)


def recipe() -> dict:
    """Everything that decides the images' contents; its hash names the cached files."""
    return {
        "suite": SUITE,
        "packages": sorted(PACKAGES),
        "bootloaders": {k: list(v) for k, v in BOOTLOADER_PACKAGES.items()},
        "cmdline": KERNEL_CMDLINE,
        "disk": DISK_SIZE,
        "esp": ESP_SIZE,
        "builder": BUILDER_VERSION,
        "guest": {name: _guest_file(name) for name in _GUEST_FILES},
    }


class ImageCache:
    """The cached images; ``ensure`` builds what is missing, once, under a lock."""

    def __init__(self, root: Path | None = None, mirror: str | None = None) -> None:
        self.root = root or default_cache_dir()
        self.mirror = mirror or os.environ.get("GPUPROV_DEBIAN_MIRROR", DEFAULT_MIRROR)
        self.hash = recipe_hash(recipe())
        self.log = self.root / "build.log"
        self._build_log = BuildLog(
            self.log, LabFailure, "image build",
            "run scripts/setup.sh (it installs debootstrap, mtools, dosfstools, gdisk, e2fsprogs)")
        self._run = self._build_log.run

    def image(self, boot: str) -> Path:
        return self.root / f"{SUITE}-{boot}-{self.hash}.raw"

    @property
    def _rootfs(self) -> Path:
        return self.root / f"rootfs-{self.hash}"

    def missing(self, boots: set[str]) -> list[str]:
        return sorted(boot for boot in boots if not self.image(boot).exists())

    def ensure(self, boots: set[str], report: Report) -> dict[str, Path]:
        """Return the image of each boot variant, building the missing ones."""
        if not self.missing(boots):
            return {boot: self.image(boot) for boot in boots}
        if os.geteuid() != 0:
            raise EnvironmentProblem(
                "building the lab image needs root (debootstrap, chroot, mount)",
                "run this once as root (for example with sudo); later runs use the cached image",
            )
        with exclusive(self.root, lambda: report("waiting for another image build to finish")):
            for boot in self.missing(boots):
                if not self._rootfs.exists():
                    self._build_rootfs(report)
                self._build_disk(boot, report)
            self._prune()
        return {boot: self.image(boot) for boot in boots}

    # -- stage 1: the shared root file system ------------------------------------------------

    def _build_rootfs(self, report: Report) -> None:
        work = self._rootfs.with_name(self._rootfs.name + ".partial")
        remove_tree(work)
        report(f"debootstrap {SUITE} from {redact(self.mirror)} (about 2 minutes, once)")
        self._run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                   SUITE, str(work), self.mirror])
        report("configuring the root file system")
        seed = f"gpuprov-lab/{self.hash}"
        (work / "etc/machine-id").write_text(uuid.uuid5(uuid.NAMESPACE_URL, seed).hex + "\n")
        (work / "etc/hostname").write_text("gpuprov-lab\n")
        (work / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n")
        # User-mode networking's DNS forwarder; no resolver daemon to configure.
        (work / "etc/resolv.conf").write_text("nameserver 10.0.2.3\n")
        _install(work / "usr/local/sbin/gpuprov-lab-firstboot",
                 _guest_file("gpuprov-lab-firstboot"), 0o755)
        _install(work / "etc/systemd/system/gpuprov-lab-firstboot.service",
                 _guest_file("gpuprov-lab-firstboot.service"))
        _install(work / "etc/systemd/network/20-lab-dhcp.network",
                 _guest_file("20-lab-dhcp.network"))
        for key in (work / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        # Small initrds keep update-initramfs (which every later stage runs) fast under emulation.
        # zstd -1 instead of Debian's -9: measured in a lab host, 0.8 s instead of 7.5 s for the
        # 21 MB archive, which is 8.7 MB instead of 7.2 MB compressed.
        _install(work / "etc/initramfs-tools/conf.d/gpuprov-lab.conf",
                 "# gpuprov lab: small, fast initrds.\n"
                 "MODULES=dep\nCOMPRESS=zstd\nCOMPRESSLEVEL=1\n")
        with open(work / "etc/initramfs-tools/modules", "a") as modules:
            modules.write("virtio_pci\nvirtio_blk\next4\n")
        with in_chroot(work, self._build_log) as chroot:
            chroot(["systemctl", "enable", "systemd-networkd", "gpuprov-lab-firstboot.service"])
            every_loader = sorted({p for pkgs in BOOTLOADER_PACKAGES.values() for p in pkgs})
            chroot(["apt-get", "install", "--download-only", "--yes", "--no-install-recommends",
                    *every_loader])
            self._small_initrd(work, chroot)
        work.rename(self._rootfs)

    def _small_initrd(self, root: Path, chroot: Callable[[list[str]], None]) -> None:
        # MODULES=dep probes the running system's root device, which inside the build chroot is
        # the build machine's; build the first initrd from an explicit list instead.
        conf = root / "tmp/initramfs-build"
        shutil.copytree(root / "etc/initramfs-tools", conf)
        (conf / "conf.d/gpuprov-lab.conf").write_text(
            "MODULES=list\nCOMPRESS=zstd\nCOMPRESSLEVEL=1\n")
        kver = _kernel_version(root)
        chroot(["mkinitramfs", "-d", "/tmp/initramfs-build", "-o", f"/boot/initrd.img-{kver}",
                kver])
        shutil.rmtree(conf)

    # -- stage 2: one bootable disk per boot loader ------------------------------------------

    def _build_disk(self, boot: str, report: Report) -> None:
        image = self.image(boot)
        work = image.with_name(image.name + ".partial")
        remove_tree(work)
        work.mkdir(parents=True)
        root = work / "root"
        report(f"{boot} image: copying the root file system")
        self._run(["cp", "-a", "--reflink=auto", str(self._rootfs), str(root)])
        seed = f"gpuprov-lab/{self.hash}/{boot}"
        root_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, seed + "/root"))
        esp_id = uuid.uuid5(uuid.NAMESPACE_URL, seed + "/esp").hex[:8].upper()
        (root / "etc/fstab").write_text(
            f"UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n"
            f"UUID={esp_id[:4]}-{esp_id[4:]}\t/boot/efi\tvfat\tumask=0077\t0\t1\n"
        )
        kver = _kernel_version(root)
        report(f"{boot} image: installing the boot loader")
        # The ESP is a file system of its own while the boot loader is set up: bootctl wants a
        # mount point, and kernel-install writes entry paths relative to the ESP's mount.
        esp_mount, esp_tree = root / "boot/efi", work / "esp"
        esp_mount.mkdir(exist_ok=True)
        self._run(["mount", "-t", "tmpfs", "-o", f"size={ESP_SIZE}", "gpuprov-esp", str(esp_mount)])
        try:
            with in_chroot(root, self._build_log) as chroot:
                chroot(["apt-get", "install", "--no-download", "--yes", "--no-install-recommends",
                        *BOOTLOADER_PACKAGES[boot]])
                if boot == "grub":
                    self._setup_grub(root, chroot, root_uuid, kver)
                else:
                    self._setup_systemd_boot(root, chroot, root_uuid, kver)
                chroot(["apt-get", "clean"])
            shutil.copytree(esp_mount, esp_tree)
        finally:
            subprocess.run(["umount", str(esp_mount)], check=False)
        report(f"{boot} image: writing the disk")
        self._assemble(work, root, esp_tree, esp_id, root_uuid)
        (work / "disk.raw").rename(image)
        remove_tree(work)

    def _setup_grub(self, root: Path, chroot, root_uuid: str, kver: str) -> None:
        defaults = root / "etc/default/grub"
        text = defaults.read_text()
        text = re.sub(r"(?m)^GRUB_TIMEOUT=.*$", "GRUB_TIMEOUT=1", text)
        text = re.sub(r'(?m)^GRUB_CMDLINE_LINUX=.*$',
                      f'GRUB_CMDLINE_LINUX="{LAB_CMDLINE}"', text)
        text += ('\n# gpuprov lab: the serial port is the console.\n'
                 'GRUB_TERMINAL="serial console"\n'
                 'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n')
        defaults.write_text(text)
        # grub-install refuses the build directory as an ESP, so do its two jobs by hand: the
        # modules where the core image looks for them, and the core image at the removable path.
        shutil.copytree(root / "usr/lib/grub/x86_64-efi", root / "boot/grub/x86_64-efi",
                        dirs_exist_ok=True)
        cmdline = KERNEL_CMDLINE
        (root / "boot/grub/grub.cfg").write_text(
            _render("grub.cfg.j2", root_uuid=root_uuid, kernel_version=kver, cmdline=cmdline))
        (root / "tmp/grub-early.cfg").write_text(_render("grub-early.cfg.j2", root_uuid=root_uuid))
        (root / "boot/efi/EFI/BOOT").mkdir(parents=True, exist_ok=True)
        chroot(["grub-mkimage", "-O", "x86_64-efi", "-p", "/boot/grub", "-c", "/tmp/grub-early.cfg",
                "-o", "/boot/efi/EFI/BOOT/BOOTX64.EFI", *GRUB_MODULES])
        (root / "tmp/grub-early.cfg").unlink()

    def _setup_systemd_boot(self, root: Path, chroot, root_uuid: str, kver: str) -> None:
        (root / "etc/kernel").mkdir(exist_ok=True)
        (root / "etc/kernel/cmdline").write_text(f"root=UUID={root_uuid} ro {KERNEL_CMDLINE}\n")
        chroot(["bootctl", "install", "--esp-path=/boot/efi", "--no-variables",
                "--make-machine-id-directory=yes"])
        chroot(["kernel-install", "add", kver, f"/boot/vmlinuz-{kver}", f"/boot/initrd.img-{kver}"])

    def _assemble(self, work: Path, root: Path, esp_tree: Path, esp_id: str,
                  root_uuid: str) -> None:
        layout = disk_layout(DISK_SIZE, ESP_SIZE)
        disk, esp = work / "disk.raw", work / "esp.img"
        with open(disk, "wb") as f:
            f.truncate(layout.total)
        self._run(["sgdisk", *layout.sgdisk_args(), str(disk)])
        self._run(["mkfs.vfat", "-F", "32", "-n", "EFI", "-i", esp_id, "-C", str(esp),
                   str(layout.esp_size // 1024)])
        if entries := sorted(esp_tree.iterdir()):
            self._run(["mcopy", "-s", "-Q", "-i", str(esp), *map(str, entries), "::/"])
        self._run(["dd", f"if={esp}", f"of={disk}", "bs=1M", f"seek={layout.esp_start // MIB}",
                   "conv=notrunc,sparse", "status=none"])
        esp.unlink()
        self._run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-U", root_uuid,
                   "-E", f"offset={layout.root_start}", "-d", str(root), str(disk),
                   f"{layout.root_size // 1024}k"])

    # -- helpers -----------------------------------------------------------------------------

    def _prune(self) -> None:
        """Drop root file systems of older recipes (older disk images may still back hosts)."""
        for old in self.root.glob("rootfs-*"):
            if old != self._rootfs:
                remove_tree(old)


def _install(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _kernel_version(root: Path) -> str:
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise LabFailure(f"expected one kernel in the image, found {kernels or 'none'}")
    return kernels[0]
