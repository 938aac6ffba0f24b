"""What the CLI prints is what the hosts and APIs said: names, paths and fingerprints are
never read as rich markup or emoji codes."""

from __future__ import annotations

import pytest

from gpuprov.cli import app as cli_app
from gpuprov.cli.output import progress
from gpuprov.errors import UsageError

QUOTED = "fingerprint A2:CD:53:E9 of [datastore1] iso/debian.iso"


def test_errors_and_hints_are_printed_verbatim(monkeypatch, capsys):
    def fail():
        raise UsageError(f"bad: {QUOTED}", f"see [bold]{QUOTED}")

    monkeypatch.setattr(cli_app, "app", fail)
    with pytest.raises(SystemExit) as exited:
        cli_app.main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"error: bad: {QUOTED}" in err and f"hint: see [bold]{QUOTED}" in err


def test_progress_lines_are_printed_verbatim(capsys):
    with progress() as report:
        report("[esx1]", QUOTED)
    assert f"[esx1]: {QUOTED}" in capsys.readouterr().err


def test_a_library_fault_ends_in_a_message_and_an_exit_code_never_a_traceback(monkeypatch,
                                                                             capsys):
    import requests

    for fault, code, phrase in [
        (requests.ConnectionError("connection reset"), 4, "an API did not answer as expected"),
        (KeyError("vm_id"), 1, "internal error: KeyError: 'vm_id'"),
        (PermissionError(13, "Permission denied"), 1, "PermissionError"),
    ]:
        def broken(fault=fault):
            raise fault

        monkeypatch.setattr(cli_app, "app", broken)
        with pytest.raises(SystemExit) as exited:
            cli_app.main()
        err = capsys.readouterr().err
        assert exited.value.code == code, err
        assert phrase in err and "GPUPROV_DEBUG=1" in err
        assert "Traceback" not in err


@pytest.mark.parametrize(("command", "shown"), [
    (["lab", "up"], "[default: intel]"),
    (["host", "setup"], "[default: the others go on]"),
    (["host", "inspect"], "[default: the lab's inventory]"),
    (["vm", "passthrough"], "[default: $XDG_STATE_HOME/gpuprov/vms.yml]"),
])
def test_help_keeps_the_defaults_written_in_brackets(command, shown):
    # rich read "[default: ...]" as a markup tag and dropped it from every help text.
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli_app.app, [*command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    assert shown in " ".join(result.output.replace("│", " ").split())
