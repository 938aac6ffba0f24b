#!/usr/bin/python3
# STAND-IN for NVIDIA's nvidia-ctk @VERSION@ (gpuprov tests): only `runtime configure` for
# docker, containerd and cri-o, writing what the real 1.17 command writes (the runtime entry,
# and the default runtime with --set-as-default) to the engine's main configuration file, or
# to stdout with --dry-run. Everything else is refused: this is not NVIDIA's software.
import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

VERSION = "@VERSION@"
CONFIGS = {"docker": "/etc/docker/daemon.json", "containerd": "/etc/containerd/config.toml",
           "crio": "/etc/crio/crio.conf"}
RUNTIME = "/usr/bin/nvidia-container-runtime"


def toml_key(key):
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


def toml_dump(table, path=(), depth=0):
    """The whole tree, tables after their keys, as go-toml writes it (indented per level)."""
    lines, indent = [], "  " * max(depth - 1, 0)
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if path and (scalars or not any(isinstance(v, dict) for v in table.values())):
        lines.append(f"\n{indent}[" + ".".join(toml_key(k) for k in path) + "]")
    for key, value in sorted(scalars.items()):
        lines.append(f"{indent}{'  ' if path else ''}{toml_key(key)} = {toml_value(value)}")
    for key, value in sorted((k, v) for k, v in table.items() if isinstance(v, dict)):
        lines.extend(toml_dump(value, (*path, key), depth + 1))
    return lines


def nested(table, *keys):
    for key in keys:
        table = table.setdefault(key, {})
    return table


def configure(runtime, path, name, set_as_default):
    text = Path(path).read_text() if Path(path).exists() else ""
    if runtime == "docker":
        config = json.loads(text) if text.strip() else {}
        config.setdefault("runtimes", {})[name] = {"args": [], "path": "nvidia-container-runtime"}
        if set_as_default:
            config["default-runtime"] = name
        return json.dumps(config, indent=4, sort_keys=True) + "\n"
    config = tomllib.loads(text)
    if runtime == "containerd":
        config.setdefault("version", 2)
        cri = nested(config, "plugins", "io.containerd.grpc.v1.cri", "containerd")
        nested(cri, "runtimes")[name] = {
            "privileged_without_host_devices": False, "runtime_engine": "", "runtime_root": "",
            "runtime_type": "io.containerd.runc.v2", "options": {"BinaryName": RUNTIME}}
        if set_as_default:
            cri["default_runtime_name"] = name
    else:
        crio = nested(config, "crio", "runtime")
        nested(crio, "runtimes")[name] = {"runtime_path": RUNTIME, "runtime_type": "oci"}
        if set_as_default:
            crio["default_runtime"] = name
    return "\n".join(toml_dump(config)).lstrip("\n") + "\n"


def main():
    if sys.argv[1:] in (["--version"], ["-v"]):
        print(f"NVIDIA Container Toolkit CLI version {VERSION} (gpuprov stand-in)")
        return 0
    if sys.argv[1:3] != ["runtime", "configure"]:
        print(f"stand-in nvidia-ctk: only `runtime configure` is here, not {sys.argv[1:]}",
              file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="nvidia-ctk runtime configure")
    parser.add_argument("--runtime", default="docker", choices=sorted(CONFIGS))
    parser.add_argument("--config")
    parser.add_argument("--nvidia-runtime-name", default="nvidia")
    parser.add_argument("--set-as-default", "--nvidia-set-as-default", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(sys.argv[3:])
    path = args.config or CONFIGS[args.runtime]
    output = configure(args.runtime, path, args.nvidia_runtime_name, args.set_as_default)
    if args.dry_run:
        sys.stdout.write(output)
        return 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(output)
    print(f'level=info msg="Wrote updated config to {path}"', file=sys.stderr)
    print(f'level=info msg="It is recommended that {args.runtime} daemon be restarted."',
          file=sys.stderr)
    return 0


sys.exit(main())
