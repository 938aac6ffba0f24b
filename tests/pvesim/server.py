"""PveSimulator: a Proxmox VE API over real HTTPS, for tests.

Every request goes through the steps pve-manager's PVE::HTTPServer takes, in its order:
authentication (ticket cookie + CSRF header, or API token), handler lookup (501 for unknown
paths), permission check from the schema, node resolution, then parameter validation against
the official schema (400 with per-parameter errors). Only then does the simulator's own
implementation run; a schema-valid call to a method it does not implement is answered 501.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.pvesim.api import HANDLERS, Api, Result, capabilities, require_privileges_for_path
from tests.pvesim.cluster import (
    ALL_PRIVILEGES,
    DEFAULT_PCI_FIXTURE,
    DEFAULT_TOKEN_PRIVILEGES,
    ApiToken,
    Cluster,
    Node,
    PciMapping,
    Principal,
    PveError,
    User,
    Vm,
    load_pci_fixture,
    permission_denied,
)
from tests.pvesim.schema import ApiSchema, ParameterError

API_PREFIX = "/api2/json"
TICKET_LIFETIME = 2 * 3600  # seconds, as PVE::AccessControl's $ticket_lifetime
AUTH_GRACE = 5 * 60
# Calls that need no authentication (PVE::HTTPServer::auth_handler).
ANONYMOUS_CALLS = {("GET", "/access/domains"), ("GET", "/access/ticket"),
                   ("POST", "/access/ticket"), ("POST", "/access/vncticket")}

_shared_schema: ApiSchema | None = None
_shared_schema_lock = threading.Lock()


def shared_schema() -> ApiSchema:
    """apidata.json is 2 MB; parse it once per process, not once per simulator."""
    global _shared_schema
    with _shared_schema_lock:
        if _shared_schema is None:
            _shared_schema = ApiSchema()
        return _shared_schema


class AuthError(Exception):
    """401 from the authentication step; str() is the reason phrase PVE sends."""


def self_signed_certificate(host: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key and a self-signed certificate for 127.0.0.1/localhost, with the
    extensions strict verifiers want when the certificate is its own trust anchor."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pvesim")])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, key_encipherment=False,
            content_commitment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


class PveSimulator:
    """A simulated Proxmox VE cluster reachable at ``url`` (``https://127.0.0.1:<port>``).

    Use as a context manager or call start()/stop(). Credentials: root@pam with
    ``root_password``; API tokens ``token_id``/``token_secret`` (gpuprov@pve!ci, not root) and
    ``root_token_id``/``root_token_secret`` (root@pam!ci). State is inspectable: ``vms``
    (vmid -> config dict), ``mappings``, ``calls`` (every API request as (method, path)).
    """

    host = "127.0.0.1"

    def __init__(self, nodes: Sequence[str] = ("pve1",), *,
                 pci_fixture: Path = DEFAULT_PCI_FIXTURE,
                 root_password: str | None = None,
                 users: dict[str, tuple[str | None, frozenset[str]]] | None = None,
                 tokens: dict[str, tuple[str, frozenset[str]]] | None = None):
        """``users``/``tokens`` add identities: userid -> (password or None, privileges),
        tokenid -> (secret, privileges)."""
        self.node = nodes[0]
        self.root_password = root_password or secrets.token_urlsafe(12)
        self.token_id = "gpuprov@pve!ci"
        self.token_secret = str(uuid.uuid4())
        self.root_token_id = "root@pam!ci"
        self.root_token_secret = str(uuid.uuid4())
        all_users = {
            "root@pam": User("root@pam", self.root_password, frozenset(ALL_PRIVILEGES)),
            "gpuprov@pve": User("gpuprov@pve", None, frozenset(DEFAULT_TOKEN_PRIVILEGES)),
        }
        all_tokens = {
            self.token_id: ApiToken(self.token_id, self.token_secret,
                                    frozenset(DEFAULT_TOKEN_PRIVILEGES)),
            # privsep=0: root's privileges, but its authuser is 'root@pam!ci', not 'root@pam'
            self.root_token_id: ApiToken(self.root_token_id, self.root_token_secret,
                                         frozenset(ALL_PRIVILEGES)),
        }
        for userid, (password, privileges) in (users or {}).items():
            all_users[userid] = User(userid, password, frozenset(privileges))
        for tokenid, (secret, privileges) in (tokens or {}).items():
            all_tokens[tokenid] = ApiToken(tokenid, secret, frozenset(privileges))
        pci_devices = load_pci_fixture(pci_fixture)
        self.cluster = Cluster([Node(name, [dict(d) for d in pci_devices]) for name in nodes],
                               all_users, all_tokens)
        self.schema = shared_schema()
        self.calls: list[tuple[str, str]] = []
        self.port = 0
        self.cert_pem = ""
        self.cert_path = Path()
        self.fingerprint_sha256 = ""
        self.fingerprint_hex = ""
        self.api: Api | None = None
        self._auth_secret = secrets.token_bytes(32)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: Path | None = None

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> PveSimulator:
        self._tmpdir = Path(tempfile.mkdtemp(prefix="pvesim-"))
        cert_pem, key_pem = self_signed_certificate(self.host)
        self.cert_pem = cert_pem.decode()
        self.cert_path = self._tmpdir / "pve-ssl.pem"
        self.cert_path.write_bytes(cert_pem)
        key_path = self._tmpdir / "pve-ssl.key"
        key_path.write_bytes(key_pem)
        der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
        digest = hashlib.sha256(der).hexdigest()
        self.fingerprint_hex = digest
        self.fingerprint_sha256 = ":".join(digest[i:i + 2] for i in range(0, 64, 2)).upper()
        self.api = Api(self.cluster, self.schema, self.fingerprint_sha256)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        server = _HttpsServer((self.host, 0), _RequestHandler)
        # The handshake happens on first read, in the connection's own thread.
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
        server.simulator = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="pvesim-https",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.cluster.wait_for_tasks()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> PveSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- for tests -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the node listens, as a browser would address it."""
        return f"https://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}{API_PREFIX}"

    @property
    def vms(self) -> dict[int, dict[str, Any]]:
        """vmid -> the VM's configuration as PVE stores it (current values, without pending)."""
        return {vmid: vm.config for vmid, vm in sorted(self.cluster.vms.items())}

    @property
    def mappings(self) -> dict[str, dict[str, Any]]:
        """PCI resource mappings: id -> {'map': [...], 'description': ..., ...}."""
        return {mapping_id: mapping.as_config()
                for mapping_id, mapping in sorted(self.cluster.mappings.items())}

    def status(self, vmid: int) -> str:
        """'running' or 'stopped'."""
        return self.cluster.vms[vmid].status

    def add_vm(self, node: str, vmid: int, *, running: bool = False, **config: Any) -> None:
        """Scene setting: a VM that already exists, put straight into the state (no API call,
        no task). A node not yet in the cluster joins it, with the same PCI inventory."""
        with self.cluster.lock:
            if node not in self.cluster.nodes:
                first = next(iter(self.cluster.nodes.values()))
                self.cluster.nodes[node] = Node(node, [dict(d) for d in first.pci_devices])
            assert self.api is not None, "start the simulator first"
            typed = {key: self.api.typed_value(key, value) for key, value in config.items()}
            vm = Vm(vmid, node, typed)
            if running:
                vm.status, vm.pid, vm.started_at = "running", self.cluster.next_pid(), time.time()
            self.cluster.vms[vmid] = vm

    def remove_vm(self, vmid: int) -> None:
        """Scene setting: the VM and its volumes are gone, whatever state it was in."""
        with self.cluster.lock:
            vm = self.cluster.vms.pop(vmid)
            assert self.api is not None
            node = self.cluster.nodes[vm.node]
            for volid in self.api.volumes_of(vm.config) + self.api.volumes_of(vm.pending):
                self.api.free_volume(node, volid)

    def add_mapping(self, mapping_id: str, *entries: str, description: str | None = None) -> None:
        """Scene setting: a PCI resource mapping that already exists (entries unchecked)."""
        with self.cluster.lock:
            self.cluster.mappings[mapping_id] = PciMapping(mapping_id, list(entries),
                                                           description)


    def config_text(self, vmid: int) -> str:
        """The VM's /etc/pve/qemu-server/<vmid>.conf."""
        return self.cluster.config_text(self.cluster.vms[vmid])

    def fail_task(self, kind: str, message: str) -> None:
        """Make the next task of this type (qmstart, qmcreate, qmconfig, qmstop, qmshutdown,
        qmdestroy) end with ``message`` as its error exit status."""
        self.cluster.fail_next_task(kind, message)

    @contextmanager
    def hold_tasks(self) -> Iterator[None]:
        """Tasks started inside the block report 'running' until it ends."""
        with self.cluster.hold_tasks():
            yield

    @property
    def task_delay(self) -> float:
        return self.cluster.task_delay

    @task_delay.setter
    def task_delay(self, seconds: float) -> None:
        self.cluster.task_delay = seconds

    def wait_for_tasks(self, timeout: float = 10) -> None:
        self.cluster.wait_for_tasks(timeout)

    # --- tickets and CSRF tokens (HMAC-signed here; RSA-signed on a real node) -------------------

    def _sign(self, text: str) -> str:
        digest = hmac.new(self._auth_secret, text.encode(), hashlib.sha256).digest()
        return base64.b64encode(digest).decode().rstrip("=")

    def _ticket(self, userid: str) -> str:
        plain = f"PVE:{userid}:{int(time.time()):08X}"
        return f"{plain}::{self._sign(plain)}"

    def _ticket_user(self, ticket: str) -> str | None:
        match = re.fullmatch(r"(PVE:([^:]+):([0-9A-F]{8}))::(\S+)", ticket)
        if not match or not hmac.compare_digest(match.group(4), self._sign(match.group(1))):
            return None
        age = time.time() - int(match.group(3), 16)
        return match.group(2) if -AUTH_GRACE <= age <= TICKET_LIFETIME else None

    def _csrf_token(self, userid: str) -> str:
        stamp = f"{int(time.time()):08X}"
        return f"{stamp}:{self._sign(f'{stamp}:{userid}')}"

    def _csrf_valid(self, userid: str, token: str | None) -> bool:
        match = re.fullmatch(r"([0-9A-F]{8}):(\S+)", token or "")
        return bool(match) and hmac.compare_digest(
            match.group(2), self._sign(f"{match.group(1)}:{userid}"))

    # --- request processing ----------------------------------------------------------------------

    def authenticate(self, method: str, path: str, headers: Any) -> Principal | None:
        """PVE::HTTPServer::auth_handler: API token header, else ticket cookie (+ CSRF)."""
        if (method, path) in ANONYMOUS_CALLS:
            return None
        authorization = headers.get("Authorization") or ""
        token_header = re.fullmatch(r"PVEAPIToken[= ](.+)", authorization.strip())
        if token_header:
            return self._token_principal(token_header.group(1))
        ticket = _cookie(headers.get("Cookie") or "", "PVEAuthCookie")
        if not ticket:
            raise AuthError("No ticket")
        userid = self._ticket_user(ticket)
        if userid is None or userid not in self.cluster.users:
            raise AuthError("permission denied - invalid PVE ticket")
        if method != "GET" and not self._csrf_valid(userid, headers.get("CSRFPreventionToken")):
            raise AuthError("Permission denied - invalid csrf token")
        return Principal(userid, self.cluster.users[userid].privileges)

    def _token_principal(self, value: str) -> Principal:
        """PVE::AccessControl::verify_token."""
        match = re.fullmatch(r"(.*)=(.*)", value)
        if not match:
            raise AuthError("no tokenid specified")
        tokenid, secret = match.groups()
        parts = re.fullmatch(r"([^\s:/]+@[A-Za-z][A-Za-z0-9.\-_]+)!([A-Za-z][A-Za-z0-9.\-_]+)",
                             tokenid)
        if not parts:
            raise AuthError(f"'{tokenid}' is not a valid token ID - not able to split into "
                            f"user and token parts")
        userid, name = parts.groups()
        if userid not in self.cluster.users:
            raise AuthError(f"user '{userid}' does not exist")
        token = self.cluster.tokens.get(tokenid)
        if token is None:
            raise AuthError(f"no such token '{name}' for user '{userid}'")
        if not hmac.compare_digest(token.secret, secret):
            raise AuthError("invalid token value!")
        return Principal(tokenid, token.privileges, is_token=True)

    def login(self, params: dict[str, Any]) -> dict[str, Any]:
        """POST /access/ticket (create_ticket): password, or a still valid ticket to renew."""
        username = str(params["username"])
        if "@" not in username and params.get("realm"):
            username = f"{username}@{params['realm']}"
        user = self.cluster.users.get(username)
        password = str(params["password"])
        valid = user is not None and (
            (user.password is not None and hmac.compare_digest(user.password, password))
            or self._ticket_user(password) == username)
        if not valid:
            raise PveError("authentication failure\n", 401)
        who = Principal(username, user.privileges)
        return {"username": username, "ticket": self._ticket(username),
                "CSRFPreventionToken": self._csrf_token(username), "cap": capabilities(who)}

    def dispatch(self, method: str, raw_path: str, headers: Any,
                 body: bytes) -> tuple[int, str, Any]:
        """One API call -> (status, reason phrase, JSON-able body or None for no body)."""
        url = urlsplit(raw_path)
        path = url.path
        if not (path == API_PREFIX or path.startswith(f"{API_PREFIX}/")):
            message = f"Method '{method} {path}' not implemented"
            return 501, message, {"data": None, "message": message}
        rel_path = "/" + "/".join(unquote(s) for s in path[len(API_PREFIX):].split("/") if s)
        self.calls.append((method, rel_path))
        try:
            who = self.authenticate(method, rel_path, headers)
        except AuthError as error:
            return 401, str(error), None  # PVE answers auth failures without a body
        try:
            with self.cluster.lock:
                return 200, "OK", self._call(method, rel_path, url.query, headers, body, who)
        except ParameterError as error:
            return 400, str(error).strip(), {"data": None, "message": str(error),
                                             "errors": error.errors}
        except PveError as error:
            reason = " ".join(error.message.split("\n")).strip()
            return error.status, reason, {"data": None, "message": error.message}
        except Exception:  # a simulator bug: answer it instead of dropping the connection
            message = f"pvesim internal error\n{traceback.format_exc()}"
            return 500, "pvesim internal error", {"data": None, "message": message}

    def _call(self, method: str, rel_path: str, query: str, headers: Any, body: bytes,
              who: Principal | None) -> dict[str, Any]:
        resolved = self.schema.resolve(method, rel_path)
        if resolved is None:
            raise PveError(f"Method '{method} {rel_path}' not implemented", 501)
        endpoint, uri_params = resolved
        params = self._request_params(endpoint, query, headers, body)
        for name, value in params.items():
            if name in uri_params and uri_params[name] != value:
                raise ParameterError({name: "duplicate parameter (already defined in URI) "
                                            "with conflicting values!"})
        params.update(uri_params)
        info = endpoint.info
        if who is not None:
            if who.is_token and not endpoint.allows_token:
                raise permission_denied(f"URI '{rel_path}' not available with API token, "
                                        f"need proper ticket.\n")
            self._check_api2_permissions(who, info.get("permissions"), params)
        proxy_to = info.get("proxyto")
        if proxy_to and params.get(proxy_to) is not None:
            self.cluster.node(str(params[proxy_to]))  # unknown nodes cannot be proxied to
        typed = self.schema.validate(endpoint, params)
        if (method, endpoint.path) == ("POST", "/access/ticket"):
            return {"data": self.login(typed)}
        if (method, endpoint.path) == ("GET", "/access/ticket"):
            return {"data": None}
        handler = HANDLERS.get((method, endpoint.path))
        if handler is None:
            raise PveError(f"Method '{method} {rel_path}' not implemented (pvesim implements "
                           f"only part of the API; the schema has {method} {endpoint.path})",
                           501)
        assert self.api is not None and who is not None
        result = handler(self.api, who, typed)
        if isinstance(result, Result):
            response = {"data": result.data}
            if result.total:
                response["total"] = result.total
            return response
        return {"data": result}

    @staticmethod
    def _check_api2_permissions(who: Principal, permissions: dict | None,
                                params: dict[str, Any]) -> None:
        """RPCEnvironment::check_api2_permissions."""
        if who.is_root:
            return
        if not permissions:
            raise permission_denied("user != root@pam")
        if permissions.get("user") in ("all", "world"):
            return
        if permissions.get("check"):
            require_privileges_for_path(who, permissions["check"], params)
            return
        raise permission_denied("")

    @staticmethod
    def _request_params(endpoint: Any, query: str, headers: Any,
                        body: bytes) -> dict[str, Any]:
        """Query string and body (form or JSON) merged. A repeated key becomes a list for array
        parameters and, like PVE's HTTP server, a NUL-joined string otherwise."""
        pairs = parse_qsl(query, keep_blank_values=True)
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        json_params: dict[str, Any] = {}
        if body and content_type == "application/json":
            try:
                decoded = json.loads(body)
            except ValueError:
                raise PveError("unable to parse JSON request body\n", 400) from None
            if not isinstance(decoded, dict):
                raise PveError("JSON request body must be an object\n", 400)
            json_params = {k: (str(v) if isinstance(v, int | float) and not isinstance(v, bool)
                               else v) for k, v in decoded.items()}
        elif body:
            pairs += parse_qsl(body.decode(), keep_blank_values=True)
        collected: dict[str, list[str]] = {}
        for key, value in pairs:
            collected.setdefault(key, []).append(value)
        params: dict[str, Any] = {}
        for key, values in collected.items():
            if (endpoint.properties.get(key) or {}).get("type") == "array":
                params[key] = values
            else:
                params[key] = "\0".join(values)
        params.update(json_params)
        return params


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return unquote(value)
    return None


class _HttpsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    simulator: PveSimulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client dropping a connection is not the simulator's problem


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpsServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, reason, payload = self.server.simulator.dispatch(
            self.command, self.path, self.headers, body)
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "max-age=0")
        self.send_header("Pragma", "no-cache")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass
