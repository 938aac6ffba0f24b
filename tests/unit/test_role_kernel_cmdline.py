"""The iommu role's kernel command line rules (roles/iommu/filter_plugins/kernel_cmdline.py).

They are host inspect's rules too (gpuprov/plan/kernel.py imports them), so each case of
fixtures/kernel_cmdline/iommu_changes.yml is what inspect promises and what setup writes. The
GRUB drop-in is checked by a real POSIX shell, sourcing the settings as grub-mkconfig does.
"""

import subprocess
from pathlib import Path

import pytest
import yaml

from gpuprov.ansible.roles.iommu.filter_plugins import kernel_cmdline as rules

CASES = yaml.safe_load(
    (Path(__file__).parent / "fixtures/kernel_cmdline/iommu_changes.yml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_change_and_its_result(case):
    change = rules.iommu_cmdline_change(case["cmdline"], **case["wants"])
    assert (change["add"], change["remove"]) == (case["add"], case["remove"])
    assert change["reasons"], "every decision says why"
    result = rules.kernel_cmdline_apply(case["cmdline"], change)
    assert result == case["result"]
    # Idempotent: the result needs nothing more.
    again = rules.iommu_cmdline_change(result, **case["wants"])
    assert (again["add"], again["remove"]) == ([], [])


def test_the_plugin_is_what_the_role_loads():
    filters = rules.FilterModule().filters()
    change = filters["iommu_cmdline_change"]("ro intel_iommu=off", {"vendor": "intel"})
    assert change["remove"] == ["intel_iommu=off"]
    assert set(filters) == {"iommu_cmdline_change", "kernel_cmdline_apply",
                            "grub_cmdline_values", "grub_cmdline", "grub_dropin"}


def test_grub_settings_are_read_as_assignments_last_one_winning():
    text = (
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
        '# GRUB_CMDLINE_LINUX_DEFAULT="commented"\n'
        'GRUB_CMDLINE_LINUX="console=ttyS0,115200"\n'
        "GRUB_CMDLINE_LINUX_DEFAULT='quiet splash'  # a comment\n"
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX intel_iommu=off"\n'
    )
    values = rules.grub_cmdline_values(text)
    assert values == {"GRUB_CMDLINE_LINUX": "console=ttyS0,115200 intel_iommu=off",
                      "GRUB_CMDLINE_LINUX_DEFAULT": "quiet splash"}
    assert rules.grub_cmdline(values) == "console=ttyS0,115200 intel_iommu=off quiet splash"


def _sourced(settings: str, dropin: list[str], tmp_path: Path) -> dict:
    """GRUB's two variables after a real ``sh`` sourced the settings, then the drop-in."""
    (tmp_path / "grub").write_text(settings)
    (tmp_path / "gpuprov-iommu.cfg").write_text("\n".join(dropin) + "\n")
    out = subprocess.run(
        ["sh", "-c", '. ./grub; . ./gpuprov-iommu.cfg; '
                     'printf "%s\\n%s\\n" "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"'],
        cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split("\n")
    # Spaces between parameters do not count (the kernel splits at any number of them).
    return {"GRUB_CMDLINE_LINUX": " ".join(out[0].split()),
            "GRUB_CMDLINE_LINUX_DEFAULT": " ".join(out[1].split())}


GRUB_SETTINGS = {
    "debian default": ('GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
                       'GRUB_CMDLINE_LINUX=""\n'),
    "off in GRUB_CMDLINE_LINUX": 'GRUB_CMDLINE_LINUX="console=ttyS0 intel_iommu=off"\n',
    "off in both, and iommu=off": ('GRUB_CMDLINE_LINUX="intel_iommu=off"\n'
                                   'GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=off splash"\n'),
    "quoted parameter beside the off": (
        "GRUB_CMDLINE_LINUX='dyndbg=\"file x.c +p\" intel_iommu=off'\n"),
}


@pytest.mark.parametrize("passthrough", [False, True])
@pytest.mark.parametrize("settings", GRUB_SETTINGS.values(), ids=GRUB_SETTINGS.keys())
def test_the_grub_dropin_leaves_a_command_line_that_needs_nothing(settings, passthrough,
                                                                   tmp_path):
    wants = {"vendor": "intel", "kernel_enables_intel_iommu": False, "passthrough": passthrough}
    values = rules.grub_cmdline_values(settings)
    change = rules.iommu_cmdline_change(rules.grub_cmdline(values), **wants)
    dropin = rules.grub_dropin(values, change)
    assert dropin, "each of these settings needs a change"

    after = _sourced(settings, dropin, tmp_path)
    again = rules.iommu_cmdline_change(rules.grub_cmdline(after), **wants)
    assert (again["add"], again["remove"]) == ([], [])
    # gpuprov's static reading of the settings plus the drop-in (what host inspect reports
    # afterwards) agrees with the shell's.
    assert rules.grub_cmdline_values(settings + "\n".join(dropin)) == after
    # Nothing but the removed parameters left the command line.
    kept = rules.cmdline_without(rules.grub_cmdline(values), change["remove"])
    assert rules.grub_cmdline(after) == " ".join([kept, *change["add"]]).strip()


def test_no_change_no_dropin():
    values = rules.grub_cmdline_values('GRUB_CMDLINE_LINUX="intel_iommu=on"\n')
    change = rules.iommu_cmdline_change(rules.grub_cmdline(values), vendor="intel")
    assert rules.grub_dropin(values, change) == []


def test_only_additions_keep_following_the_administrators_settings():
    # No copy of their value: a later edit of GRUB_CMDLINE_LINUX_DEFAULT still counts.
    values = rules.grub_cmdline_values('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    change = rules.iommu_cmdline_change(rules.grub_cmdline(values), vendor="intel",
                                        passthrough=True)
    assert rules.grub_dropin(values, change) == [
        'GRUB_CMDLINE_LINUX_DEFAULT="${GRUB_CMDLINE_LINUX_DEFAULT} intel_iommu=on iommu=pt"']


def test_an_extra_parameter_with_shell_characters_is_quoted(tmp_path):
    values = rules.grub_cmdline_values("")
    change = rules.iommu_cmdline_change("", vendor="amd", extra=["foo=$(reboot)"])
    dropin = rules.grub_dropin(values, change)
    assert _sourced("", dropin, tmp_path)["GRUB_CMDLINE_LINUX_DEFAULT"] == "foo=$(reboot)"
