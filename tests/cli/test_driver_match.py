"""`gpuprov driver match` through the installed CLI: what it prints, and its exit codes."""

from __future__ import annotations

import json


def test_prints_the_branch_the_packages_and_why(run_gpuprov):
    result = run_gpuprov("driver", "match", "--gpu", "10de:2330", "--cuda", "12.2")
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "gpu 10de:2330 H100 SXM5 80GB (GH100, Hopper)" in lines
    assert "branch 535 (535.261.03)" in lines
    assert "modules proprietary" in lines
    assert "packages nvidia-driver" in lines
    assert "headless nvidia-kernel-dkms nvidia-smi libcuda1 nvidia-persistenced" in lines
    assert "cuda 12.2 (needs 535.54.03 or newer)" in lines
    why = lines[lines.index("why") + 1:]
    assert why[0].startswith("- 10de:2330 (GH100, H100 SXM5 80GB) is a Hopper GPU (pci.ids ")
    assert any("is in nvidia.ids (nvidia-detect 535.261.03-1 of Debian bookworm)" in w
               for w in why)


def test_json_is_the_same_choice(run_gpuprov):
    result = run_gpuprov("driver", "match", "--gpu", "10de:1eb8", "--distro", "rhel9", "--json")
    found = json.loads(result.stdout)
    assert (found["branch"], found["modules"], found["module_stream"]) == \
        (580, "open", "nvidia-driver:580-open")


def test_an_impossible_combination_exits_2_and_names_the_newest_branch(run_gpuprov):
    result = run_gpuprov("driver", "match", "--gpu", "10de:1d01", "--modules", "open",
                         check=False)
    said = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert "error: 10de:1d01 (GP108, GeForce GT 1030) cannot use the open kernel modules" in said
    assert "hint: use --modules proprietary; the newest branch for this card is 580" in said
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_an_unknown_id_exits_3(run_gpuprov):
    result = run_gpuprov("driver", "match", "--gpu", "10de:ffff", check=False)
    assert result.returncode == 3, result.stderr
    assert "10de:ffff is neither an NVIDIA GPU in pci.ids" in " ".join(result.stderr.split())


def test_pins_for_ubuntu_and_rhel_come_from_the_data_at_the_version_given(run_gpuprov):
    result = run_gpuprov("driver", "pins", "--gpu", "10de:2330", "--distro", "ubuntu24.04",
                         "--headless", "--version", "580.95.05")
    assert "Package: nvidia-headless-580-server-open\nPin: version 580.95.05-*\n" in result.stdout
    assert "apt-mark hold nvidia-headless-580-server-open nvidia-utils-580-server" in result.stdout
    assert "not proven on a real host" in result.stdout
    result = run_gpuprov("driver", "pins", "--gpu", "10de:2330", "--distro", "rhel9",
                         "--version", "3:580.95.05-1.el9")
    lines = result.stdout.splitlines()
    assert "dnf module enable -y nvidia-driver:580-open" in lines
    [lock] = [line.split()[3:] for line in lines if line.startswith("dnf versionlock add ")]
    assert "nvidia-driver-3:580.95.05-1.el9.*" in lock


def test_pins_without_an_archive_need_the_version(run_gpuprov):
    result = run_gpuprov("driver", "pins", "--gpu", "10de:2330", "--distro", "rhel9",
                         check=False)
    assert result.returncode == 2
    assert "--distro rhel9 needs --version" in result.stderr
