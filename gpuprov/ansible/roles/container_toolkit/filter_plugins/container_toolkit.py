"""What the container_toolkit role reads from files/container-toolkit-state.sh's output: the
runtimes, what each of them says about the NVIDIA runtime, the packages and the GPUs, and what
is still wrong. Pure functions; they import nothing from Ansible or gpuprov, so the role,
gpuprov and the tests all load this file.
"""

from __future__ import annotations

import json
import re

RUNTIMES = ("docker", "containerd", "crio")
RUNTIME_BINARY = "/usr/bin/nvidia-container-runtime"


def container_toolkit_sections(text: str) -> dict[str, list[str]]:
    """The state script's "== name" sections, each as its non-empty lines."""
    sections: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in (text or "").splitlines():
        if line.startswith("== "):
            lines = sections.setdefault(line[3:].strip(), [])
        elif line.strip():
            lines.append(line.strip())
    return sections


def _docker(lines: list[str]) -> dict:
    """``docker info``: the runtimes the daemon lists and its default, or why it did not say."""
    runtimes, default, error = {}, "", ""
    for line in lines:
        if line.startswith("{"):
            try:
                runtimes = {name: (spec or {}).get("path", "")
                            for name, spec in json.loads(line).items()}
            except ValueError:
                error = line
        elif line.startswith("default "):
            default = line.split(" ", 1)[1]
        else:
            error = error or line
    return {"runtimes": runtimes, "default": default, "error": error}


def _toml_tables(lines: list[str], binary_key: str) -> dict:
    """containerd's or CRI-O's configuration dump, cut to the NVIDIA runtime's tables: the
    runtime's binary (containerd's options.BinaryName, CRI-O's runtime_path) and the default."""
    found = {"nvidia": False, "binary": "", "default": ""}
    for line in lines:
        if re.match(r"^\[.*runtimes\.nvidia\]$", line):
            found["nvidia"] = True
        elif match := re.match(rf'^{binary_key}\s*=\s*"(.*)"$', line):
            found["binary"] = match[1]
        elif match := re.match(r'^(default_runtime_name|default_runtime)\s*=\s*"(.*)"$', line):
            found["default"] = match[2]
    return found


def container_toolkit_state(text: str, pins: dict, runtimes: list, set_as_default: bool,
                            cdi: bool = True) -> dict:
    """The toolkit's state on a host, each runtime as the runtime itself reports it, and each
    thing still wrong as a sentence that says what to do. ``pins``: package -> exact version;
    ``runtimes``: the ones the NVIDIA runtime must be wired to (empty: every one installed)."""
    sections = container_toolkit_sections(text)
    installed_runtimes = dict(line.split(" ", 1) if " " in line else (line, "")
                              for line in sections.get("runtimes", []))
    installed = {}
    for line in sections.get("packages", []):
        fields = line.split()
        if len(fields) == 3 and fields[2] in ("ii", "hi"):
            installed[fields[0]] = fields[1]
    holds = set(sections.get("holds", []))
    gpu_lines = sections.get("gpus")
    gpus = {"exit": None, "list": [], "output": ""}
    if gpu_lines:
        exits = [line for line in gpu_lines if re.fullmatch(r"exit \d+", line)]
        gpus["exit"] = int(exits[-1].split()[1]) if exits else -1
        gpus["list"] = [line for line in gpu_lines if re.match(r"^GPU \d+: ", line)]
        gpus["output"] = " ".join(line for line in gpu_lines if line not in exits)
    wired = {
        "docker": _docker(sections.get("docker", [])),
        # containerd's table also has an empty runtime_path; its binary is options.BinaryName.
        "containerd": _toml_tables(sections.get("containerd", []), "BinaryName"),
        "crio": _toml_tables(sections.get("crio", []), "runtime_path"),
    }
    wanted = list(runtimes) or [r for r in RUNTIMES if r in installed_runtimes]

    problems = []
    missing = [p for p in pins if p not in installed]
    if missing:
        problems.append(f"not installed: {' '.join(missing)}")
    off_pin = sorted(p for p, v in pins.items() if p in installed and installed[p] != v)
    if off_pin:
        problems.append("not at their pinned versions: " + ", ".join(
            f"{p} {installed[p]} (pinned {pins[p]})" for p in off_pin))
    unheld = sorted(set(pins) & set(installed) - holds)
    if unheld:
        problems.append(f"not held (apt-mark hold them): {' '.join(unheld)}")
    if not wanted:
        problems.append("no container runtime (docker, containerd, CRI-O) is installed: "
                        "install one, then run this again")
    for runtime in wanted:
        state = installed_runtimes.get(runtime)
        if state is None:
            problems.append(f"{runtime} is not installed: install it, or leave it out of "
                            "container_toolkit_runtimes")
            continue
        if state != "active":
            problems.append(f"{runtime} is {state or 'not running'}, so it cannot say which "
                            f"runtimes it has: systemctl start {runtime}")
            continue
        seen = wired[runtime]
        if runtime == "docker":
            if seen["error"] or "nvidia" not in seen["runtimes"]:
                problems.append("docker info does not list the nvidia runtime"
                                + (f" ({seen['error'][:200]})" if seen["error"] else "")
                                + ": run nvidia-ctk runtime configure --runtime=docker and "
                                  "restart docker")
            elif set_as_default and seen["default"] != "nvidia":
                problems.append(f"docker's default runtime is {seen['default'] or 'unknown'}, "
                                "not nvidia")
        else:
            if not seen["nvidia"] or seen["binary"] != RUNTIME_BINARY:
                problems.append(f"{runtime}'s configuration has no nvidia runtime running "
                                f"{RUNTIME_BINARY}: run nvidia-ctk runtime configure "
                                f"--runtime={runtime} and restart {runtime}")
            elif set_as_default and seen["default"] != "nvidia":
                problems.append(f"{runtime}'s default runtime is {seen['default'] or 'unknown'}, "
                                "not nvidia")
    if cdi and gpus["exit"] == 0 and gpus["list"] and not sections.get("cdi"):
        problems.append("no CDI spec for the GPUs: nvidia-ctk cdi generate "
                        "--output=/etc/cdi/nvidia.yaml")
    return {
        "runtimes": installed_runtimes, "wanted": wanted, "wired": wired,
        "installed": installed, "gpus": gpus, "gpu_answers": gpus["exit"] == 0,
        "cdi_spec": bool(sections.get("cdi")), "problems": problems,
    }


class FilterModule:
    def filters(self):
        return {"container_toolkit_state": container_toolkit_state}
