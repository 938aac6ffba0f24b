"""The official Proxmox VE API schema, and a request validator that behaves like PVE's own.

apidata.json is the tree the API viewer is built from (see README.md for its provenance). This
module finds the schema entry for a request path (``/nodes/pve1/qemu/100/config`` ->
``/nodes/{node}/qemu/{vmid}/config``) and checks every parameter the way PVE::JSONSchema does:
same order of checks, same error texts, errors collected per parameter and raised together as
HTTP 400 "Parameter verification failed.".
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.pvesim import formats

APIDATA = Path(__file__).with_name("apidata.json")

# How many instances an indexed property ('hostpci[n]') has. The schema collapses them into one
# entry; most descriptions state the range ("n is 0 to 30"), the others are the constants from
# the Perl source (e.g. qemu-server's $MAX_HOSTPCI_DEVICES = 16, $MAX_NETS = 32).
INDEXED_PROPERTY_COUNTS = {
    "hostpci": 16, "net": 32, "ipconfig": 32, "numa": 8, "unused": 256, "usb": 14,
    "virtiofs": 10, "mp": 256, "dev": 256, "acmedomain": 6, "link": 8,
}
RANGE_IN_DESCRIPTION = re.compile(r"n is 0 to (\d+)")

PARAMETER_VERIFICATION_FAILED = "Parameter verification failed.\n"


class ParameterError(Exception):
    """PVE's raise_param_exc: HTTP 400 with a message and an ``errors`` object per parameter."""

    def __init__(self, errors: dict[str, str]):
        super().__init__(PARAMETER_VERIFICATION_FAILED)
        self.errors = errors


class PropertyStringError(Exception):
    """parse_property_string failed; str() is the text PVE appends after 'invalid format - '."""


def perl_to_python_regex(pattern: str) -> str:
    """Perl's stringified qr// is '(?^flags:...)'; Python spells the same group '(?flags:...)'."""
    return re.sub(r"\(\?\^([a-z]*):", lambda m: f"(?{m.group(1)}:" if m.group(1) else "(?:",
                  pattern)


@functools.cache
def compiled_pattern(pattern: str) -> re.Pattern[str]:
    # PVE anchors every pattern: m/^$pattern$/.
    return re.compile(rf"(?:{perl_to_python_regex(pattern)})", re.S)


def is_integer(value: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", value) is not None


def is_number(value: str) -> bool:
    return re.fullmatch(r"[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?", value) is not None


def parse_boolean(value: str) -> int | None:
    """PVE::JSONSchema::parse_boolean, used inside property strings only."""
    if re.fullmatch(r"1|on|yes|true", value, re.I):
        return 1
    if re.fullmatch(r"0|off|no|false", value, re.I):
        return 0
    return None


def perl_number(value: float) -> str:
    """How Perl interpolates a number into an error message (1e9 -> 999999999, 0.5 -> 0.5)."""
    return str(int(value)) if float(value).is_integer() else str(value)


def expand_indexed(properties: dict[str, dict]) -> dict[str, dict]:
    """Replace 'hostpci[n]' by hostpci0..hostpci15 (as the real schema has them)."""
    expanded = {}
    for name, schema in properties.items():
        if not name.endswith("[n]"):
            expanded[name] = schema
            continue
        base = name[:-3]
        stated = RANGE_IN_DESCRIPTION.search(schema.get("description") or "")
        count = int(stated.group(1)) + 1 if stated else INDEXED_PROPERTY_COUNTS[base]
        for index in range(count):
            expanded[f"{base}{index}"] = schema
    return expanded


@dataclass
class Endpoint:
    """One method of one schema path."""

    method: str
    path: str  # the template, e.g. /nodes/{node}/qemu/{vmid}/config
    info: dict

    @functools.cached_property
    def properties(self) -> dict[str, dict]:
        return expand_indexed((self.info.get("parameters") or {}).get("properties") or {})

    @property
    def additional_properties(self) -> Any:
        return (self.info.get("parameters") or {}).get("additionalProperties")

    @property
    def allows_token(self) -> bool:
        return bool(self.info.get("allowtoken", 1))


@dataclass
class _PathNode:
    literal: dict[str, _PathNode] = field(default_factory=dict)
    variable: tuple[str, _PathNode] | None = None
    api_node: dict | None = None


class ApiSchema:
    """apidata.json, indexed by path, plus the validator."""

    def __init__(self, apidata: Path = APIDATA):
        self.tree = json.loads(apidata.read_text())
        self._root = _PathNode()
        self._by_path: dict[str, dict] = {}
        self._index(self.tree)
        self._hash_formats: dict[str, dict | None] = {}
        self._endpoints: dict[tuple[str, str], Endpoint] = {}
        # Named formats met during validation that nothing here can check (for transparency).
        self.unchecked_formats: set[str] = set()

    def _index(self, nodes: list[dict]) -> None:
        for api_node in nodes:
            self._by_path[api_node["path"]] = api_node
            cursor = self._root
            for segment in api_node["path"].strip("/").split("/"):
                if segment.startswith("{") and segment.endswith("}"):
                    if cursor.variable is None:
                        cursor.variable = (segment[1:-1], _PathNode())
                    cursor = cursor.variable[1]
                else:
                    cursor = cursor.literal.setdefault(segment, _PathNode())
            cursor.api_node = api_node
            self._index(api_node.get("children") or [])

    def node(self, template: str) -> dict:
        return self._by_path[template]

    def endpoint(self, method: str, template: str) -> Endpoint:
        """The schema of one method; cached, since expanding 'unused[n]' & co. is not free."""
        key = (method, template)
        if key not in self._endpoints:
            self._endpoints[key] = Endpoint(method, template,
                                            self._by_path[template]["info"][method])
        return self._endpoints[key]

    def resolve(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        """The endpoint a request path names and the values of its {variables}; a literal
        segment wins over a variable, as in PVE's handler lookup. None: no such method."""
        uri_params: dict[str, str] = {}
        cursor = self._root
        for segment in [s for s in path.strip("/").split("/") if s]:
            if segment in cursor.literal:
                cursor = cursor.literal[segment]
            elif cursor.variable is not None:
                name, cursor = cursor.variable
                uri_params[name] = segment
            else:
                return None
        api_node = cursor.api_node
        if api_node is None or method not in (api_node.get("info") or {}):
            return None
        return self.endpoint(method, api_node["path"]), uri_params

    # --- validation ------------------------------------------------------------------------------

    def validate(self, endpoint: Endpoint, params: dict[str, Any]) -> dict[str, Any]:
        """Check all parameters; raise ParameterError with every problem found, else return the
        parameters typed (integers and booleans as int, numbers as float, lists as lists)."""
        errors: dict[str, str] = {}
        self.check_object("", endpoint.properties, params, endpoint.additional_properties,
                          errors)
        if errors:
            raise ParameterError(errors)
        return {name: self._typed(value, endpoint.properties.get(name) or {})
                for name, value in params.items()}

    @staticmethod
    def _typed(value: Any, schema: dict) -> Any:
        kind = schema.get("type")
        if isinstance(value, list):
            return [str(item) for item in value]
        if kind == "boolean":
            return 1 if value is True or str(value) == "1" else 0
        if kind == "integer":
            return int(str(value))
        if kind == "number":
            return float(str(value))
        return value if isinstance(value, str) else str(value)

    def check_object(self, path: str, schema: dict[str, dict], value: dict[str, Any],
                     additional_properties: Any, errors: dict[str, str]) -> None:
        for key, subschema in schema.items():
            self.check_prop(value.get(key), subschema, f"{path}.{key}" if path else key, errors)
        for key in value:
            key_path = f"{path}.{key}" if path else key
            subschema = schema.get(key)
            if subschema is not None:
                requires = subschema.get("requires")
                if isinstance(requires, str) and value.get(requires) is None:
                    add_error(errors, f"{path}.{requires}" if path else requires,
                              f"missing property - '{key_path}' requires this property")
                continue
            if additional_properties is not None and not additional_properties:
                add_error(errors, key_path, "property is not defined in schema and the schema "
                                            "does not allow additional properties")

    def check_prop(self, value: Any, schema: dict, path: str, errors: dict[str, str]) -> None:
        if value is None:
            if not schema.get("optional") and not schema.get("alias"):
                add_error(errors, path, "property is missing and it is not optional")
            return
        if not self.check_type(path, schema.get("type"), value, errors):
            return
        if isinstance(value, list):
            items = schema.get("items")
            if items:
                for index, item in enumerate(value):
                    self.check_prop(item, items, f"{path}[{index}]", errors)
            return
        if isinstance(value, bool):  # a JSON boolean passed the boolean type check
            return
        text = str(value)
        format_ = schema.get("format")
        if format_:
            try:
                self.check_format(format_, text, path)
            except PropertyStringError as error:
                add_error(errors, path, f"invalid format - {error}")
                return
        pattern = schema.get("pattern")
        if pattern and not compiled_pattern(pattern).fullmatch(text):
            add_error(errors, path, "value does not match the regex pattern")
            return
        if schema.get("maxLength") is not None and len(text) > int(schema["maxLength"]):
            add_error(errors, path, f"value may only be {schema['maxLength']} characters long")
            return
        if schema.get("minLength") is not None and len(text) < int(schema["minLength"]):
            add_error(errors, path,
                      f"value must be at least {schema['minLength']} characters long")
            return
        if is_number(text):
            maximum, minimum = schema.get("maximum"), schema.get("minimum")
            if maximum is not None and float(text) > float(maximum):
                add_error(errors, path,
                          f"value must have a maximum value of {perl_number(float(maximum))}")
                return
            if minimum is not None and float(text) < float(minimum):
                add_error(errors, path,
                          f"value must have a minimum value of {perl_number(float(minimum))}")
                return
        enum = schema.get("enum")
        if enum and text not in [str(choice) for choice in enum]:
            add_error(errors, path, f"value '{text}' does not have a value in the enumeration "
                                    f"'{', '.join(str(choice) for choice in enum)}'")

    @staticmethod
    def check_type(path: str, kind: str | None, value: Any, errors: dict[str, str]) -> bool:
        if not kind or kind == "any":
            return True
        if kind == "array":
            if isinstance(value, list):
                return True
            add_error(errors, path, "type check ('array') failed")
            return False
        if kind == "object":
            if isinstance(value, dict):
                return True
            add_error(errors, path, "type check ('object') failed")
            return False
        if isinstance(value, list | dict):
            perl_ref = "ARRAY" if isinstance(value, list) else "HASH"
            add_error(errors, path, f"type check ('{kind}') failed - got {perl_ref}")
            return False
        if isinstance(value, bool):  # a JSON true/false; Perl sees a JSON::PP::Boolean object
            if kind == "boolean":
                return True
            add_error(errors, path, f"type check ('{kind}') failed - got JSON::PP::Boolean")
            return False
        text = str(value)
        valid = {
            "string": True,
            # Top-level booleans are strict: only 0 and 1 ('true' is refused).
            "boolean": text in ("0", "1"),
            "integer": is_integer(text),
            "number": is_number(text),
        }.get(kind, True)
        if not valid:
            add_error(errors, path, f"type check ('{kind}') failed - got '{text}'")
        return valid

    def check_format(self, format_: str | dict, value: str, path: str) -> dict | None:
        """PVE::JSONSchema::check_format; raises PropertyStringError with PVE's text."""
        if isinstance(format_, dict):
            return self.parse_property_string(format_, value, path)
        plain = formats.plain_format(format_)
        if plain is not None:
            try:
                plain(value)
            except formats.FormatError as error:
                raise PropertyStringError(f"{error}\n") from None
            return None
        hash_format = self.named_hash_format(format_)
        if hash_format is not None:
            return self.parse_property_string(hash_format, value, path)
        self.unchecked_formats.add(format_)
        return None

    def named_hash_format(self, name: str) -> dict | None:
        """The key/value grammar of a hash-based named format: the cdrom alias reuses ide[n]'s
        grammar (qemu-server registers 'pve-qm-ide' as the IDE drive format), the others are
        read from their typetext."""
        if name not in self._hash_formats:
            self._hash_formats[name] = self._derive_hash_format(name)
        return self._hash_formats[name]

    def _derive_hash_format(self, name: str) -> dict | None:
        if name == "pve-qm-ide":
            return self.endpoint("POST", "/nodes/{node}/qemu").properties["ide0"]["format"]
        typetext = self._typetexts.get(name)
        if typetext is None:
            return None
        try:
            return formats.format_from_typetext(name, typetext)
        except formats.TypetextError:
            return None

    @functools.cached_property
    def _typetexts(self) -> dict[str, str]:
        found: dict[str, str] = {}

        def visit(schema: Any) -> None:
            if isinstance(schema, dict):
                if isinstance(schema.get("format"), str) and schema.get("typetext"):
                    found.setdefault(schema["format"], schema["typetext"])
                for child in schema.values():
                    visit(child)
            elif isinstance(schema, list):
                for child in schema:
                    visit(child)

        for api_node in self._by_path.values():
            for info in (api_node.get("info") or {}).values():
                visit(info.get("parameters"))
        return found

    def parse_property_string(self, format_: dict, data: str, path: str) -> dict:
        """PVE::JSONSchema::parse_property_string: 'k=v,k2=v2' with a default key, aliases and
        key aliases; booleans accept yes/on/true/no/off/false; then each value is checked
        against its sub-schema. Unknown keys are always refused."""
        result: dict[str, str | int] = {}
        default_key = None
        for part in data.split(","):
            if not part.strip():
                continue
            keyed = re.fullmatch(r"([^=]+)=(.+)", part, re.S)
            if keyed:
                key, value = keyed.groups()
                if key in result:
                    raise PropertyStringError(
                        f"duplicate key in comma-separated list property: {key}\n")
                schema = format_.get(key)
                if schema and schema.get("alias"):
                    key_alias = schema.get("keyAlias")
                    if key_alias:
                        if key_alias in result:
                            raise PropertyStringError(
                                f"key alias '{key_alias}' is already defined\n")
                        result[key_alias] = key
                    key = schema["alias"]
                    schema = format_.get(key)
                if not schema:
                    raise PropertyStringError(
                        f"invalid key in comma-separated list property: {key}\n")
                if schema.get("type") == "boolean":
                    parsed = parse_boolean(value)
                    result[key] = value if parsed is None else parsed
                else:
                    result[key] = value
            elif "=" not in part:
                if default_key:
                    raise PropertyStringError(
                        f"duplicate key in comma-separated list property: {default_key}\n")
                for key, schema in format_.items():
                    if schema.get("default_key"):
                        default_key = key
                        if not result.get(key):
                            result[key] = part
                            break
                        raise PropertyStringError(
                            f"duplicate key in comma-separated list property: {key}\n")
                if not default_key:
                    raise PropertyStringError(
                        "value without key, but schema does not define a default key\n")
            else:
                raise PropertyStringError("missing key in comma-separated list property\n")
        errors: dict[str, str] = {}
        self.check_object(path, format_, result, 0, errors)
        if errors:
            details = "".join(f"{key}: {message}\n" for key, message in errors.items())
            raise PropertyStringError(f"format error\n{details}")
        return result


def add_error(errors: dict[str, str], path: str, message: str) -> None:
    path = path or "_root"
    errors[path] = f"{errors[path]}\\n{message}" if path in errors else message


def print_property_string(data: dict, format_: dict) -> str:
    """PVE::JSONSchema::print_property_string: the default key's value first (bare), then the
    required keys, then the rest, each group sorted; key aliases print as 'virtio=MAC'."""
    default_key = next((k for k, s in format_.items() if s.get("default_key")), None)
    key_alias_of = {s["keyAlias"]: s["alias"] for s in format_.values() if s.get("keyAlias")}
    done: set[str] = set()
    parts: list[str] = []

    def render(key: str, value: Any) -> str:
        schema = format_.get(key) or {}
        if schema.get("format") == "disk-size":  # parse_drive holds sizes in bytes
            size = value if isinstance(value, int) else formats.parse_size(str(value))
            return formats.format_size(size) if size is not None else str(value)
        return str(value)

    def add(key: str, bare: bool = False) -> None:
        if key in done or data.get(key) is None:
            return
        done.add(key)
        combined = key_alias_of.get(key)
        if combined and data.get(combined) is not None:
            parts.append(f"{data[key]}={render(combined, data[combined])}")
            done.add(combined)
            return
        parts.append(render(key, data[key]) if bare else f"{key}={render(key, data[key])}")

    if default_key:
        add(default_key, bare=True)
    for key in sorted(data):
        if key in format_ and not format_[key].get("optional"):
            add(key)
    for key in sorted(data):
        add(key)
    return ",".join(parts)
