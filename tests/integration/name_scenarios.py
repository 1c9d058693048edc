"""Scenarios for host-name allow entries (``scenarios.py names ...`` runs them as a supervisor
process inside the test's outer network namespace). A test upstream resolver (dnsmasq serving
fixed test records on 198.51.100.53, which slirp's resolver forwards to) and test services;
"remote" names resolve into 203.0.113.0/24, which the outer namespace loops back to the
services on 198.51.100.9. Nothing can leave the machine."""

from __future__ import annotations

import os
import select
import subprocess
import time

import sandbox_kernel.planner.network as network_planner

try:
    from .scenarios import Server, outcome, sandboxed
    from .supervisors import HOST_TEST_ADDRESS, RESOLVER_TEST_ADDRESS, SERVICES_TEST_ADDRESS
except ImportError:  # run from scenarios.py as a supervisor process
    from scenarios import Server, outcome, sandboxed
    from supervisors import HOST_TEST_ADDRESS, RESOLVER_TEST_ADDRESS, SERVICES_TEST_ADDRESS

METADATA_TEST_ADDRESS = "169.254.1.1"
RECORDS = {
    "allowed.test": "203.0.113.80",
    "sub.allowed.test": "203.0.113.80",  # below an exact entry: must not be answered
    "x.wild.test": "203.0.113.82",  # below a "*." entry: answered
    "blocked.test": "203.0.113.81",  # unlisted
    "other.test": "203.0.113.83",
    "meta.test": METADATA_TEST_ADDRESS,  # allowed, but resolves to a metadata address
    "lan.test": HOST_TEST_ADDRESS,  # allowed, but resolves to the host's own address
}


class UpstreamResolver:
    """The test's upstream: dnsmasq answering RECORDS (and nothing else) on (address, 53)."""

    def __init__(self, address: str, records: dict[str, str]):
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=", "--log-facility=-",
                "--no-resolv", "--no-hosts", "--user=", "--group=", f"--listen-address={address}",
                "--bind-interfaces", "--port=53", "--local-ttl=1", "--log-queries"]
        argv += [f"--host-record={name},{ip}" for name, ip in records.items()]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log = b""
        deadline = time.monotonic() + 10
        while b"started, version" not in self.log and time.monotonic() < deadline:
            self._read(deadline - time.monotonic())
        if b"started, version" not in self.log:
            self.stop()
            raise RuntimeError(f"test upstream resolver did not start: {self.log[-500:]!r}")

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.proc.stderr], [], [], max(0.0, timeout))
        if ready:
            self.log += os.read(self.proc.stderr.fileno(), 65536)

    def queried(self) -> list[str]:
        """Names the upstream was asked for (from its query log)."""
        self._read(0.2)
        return [line.split()[0] for line in self.log.decode(errors="replace").split("query[A] ")[1:]]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stderr.close()


NAMES_CODE = r"""
import json, socket, struct, time
def query(name, server=None):
    server = server or open("/etc/resolv.conf").read().split()[1]
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(q, (server, 53))
        r = s.recv(512)
    except OSError as e:
        return {"result": type(e).__name__, "errno": e.errno}
    finally:
        s.close()
    addresses, i = [], len(q)
    for _ in range(struct.unpack(">H", r[6:8])[0]):
        i += 2  # a compressed pointer to the question's name
        rtype, _, _, length = struct.unpack(">HHIH", r[i:i + 10])
        i += 10
        if rtype == 1:
            addresses.append(socket.inet_ntoa(r[i:i + 4]))
        i += length
    return {"result": "answered", "rcode": r[3] & 15, "addresses": addresses}
def tcp(host, port):
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect((host, port))
        return {"result": "connected", "data": s.recv(5).decode()}
    except OSError as e:
        return {"result": type(e).__name__, "errno": e.errno, "timeout": isinstance(e, socket.timeout)}
    finally:
        s.close()
P = PORTS
res = {"resolv_conf": open("/etc/resolv.conf").read()}
res["allowed"] = query("allowed.test")
try:
    res["allowed_getaddrinfo"] = sorted({a[4][0] for a in socket.getaddrinfo("allowed.test", P["a"], socket.AF_INET, socket.SOCK_STREAM)})
except OSError as e:
    res["allowed_getaddrinfo"] = str(e)
res["allowed_connect"] = tcp("203.0.113.80", P["a"])
res["allowed_other_port"] = tcp("203.0.113.80", P["b"])
res["sub"] = query("sub.allowed.test")
res["wild"] = query("x.wild.test")
res["wild_connect"] = tcp("203.0.113.82", P["a"])
res["blocked"] = query("blocked.test")
res["blocked_direct"] = tcp("203.0.113.81", P["b"])
res["meta"] = query("meta.test")
res["meta_connect"] = tcp(META, P["meta"])
res["lan"] = query("lan.test")
res["lan_connect"] = tcp(LAN, P["lan"])
res["upstream_direct"] = query("blocked.test", server="10.0.2.3")
def bind_query_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", QUERY_PORT))
        return "bound"
    except OSError as e:
        return e.errno
    finally:
        s.close()
res["bind_query_port"] = bind_query_port()
if FORGET:
    tries, t0 = 0, time.monotonic()
    while tcp("203.0.113.80", P["a"])["result"] == "connected" and time.monotonic() - t0 < 120:
        tries += 1
        time.sleep(0.25)
    res["forgotten"] = {"after_tries": tries, "then": tcp("203.0.113.80", P["a"])}
    res["requery"] = query("allowed.test")
    res["after_requery"] = tcp("203.0.113.80", P["a"])
print(json.dumps(res))
"""


def names(allow: list[str] | None = None, set_timeout: int | None = None) -> dict:
    """Run NAMES_CODE in an allowlist of host names. ``allow`` entries may use the
    placeholders A, META and LAN for the service ports; default: allowed.test, *.wild.test,
    meta.test and lan.test. ``set_timeout``: a short name-set timeout for this run."""
    if set_timeout is not None:
        network_planner.NAME_SET_TIMEOUT = set_timeout
    upstream = UpstreamResolver(RESOLVER_TEST_ADDRESS, RECORDS)
    try:
        a, b = Server(SERVICES_TEST_ADDRESS), Server(SERVICES_TEST_ADDRESS)
        meta, lan = Server(METADATA_TEST_ADDRESS), Server(HOST_TEST_ADDRESS)
        ports = {"a": a.port, "b": b.port, "meta": meta.port, "lan": lan.port}
        allow = allow or ["allowed.test:A", "*.wild.test:A", "meta.test:META", "lan.test:LAN"]
        allow = [e.replace("META", str(meta.port)).replace("LAN", str(lan.port)).replace(":A", f":{a.port}") for e in allow]
        code = (NAMES_CODE.replace("PORTS", repr(ports)).replace("META", repr(METADATA_TEST_ADDRESS))
                .replace("LAN", repr(HOST_TEST_ADDRESS)).replace("FORGET", repr(set_timeout is not None))
                .replace("QUERY_PORT", str(network_planner.RESOLVER_QUERY_PORT)))
        run_result = sandboxed({"network": {"mode": "allowlist", "allow": allow}}, code)
        result = outcome(run_result)
        result["accepted"] = {"a": a.accepted, "b": b.accepted, "meta": meta.accepted, "lan": lan.accepted}
        result["network_layer"] = run_result.report["layers"]["network"]
        result["upstream_queried"] = upstream.queried()
        return result
    finally:
        upstream.stop()


# --------------------------------------------------------------------------- pip through names

def _wheel(name: str, version: str) -> bytes:
    """A minimal valid pure-Python wheel of ``name`` (``import name`` prints nothing)."""
    import base64
    import hashlib
    import io
    import zipfile
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
                     for path, data in files.items()) + f"{dist}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, data in {**files, f"{dist}/RECORD": record.encode()}.items():
            z.writestr(path, data)
    return buf.getvalue()


class PackageIndex:
    """A PEP 503 simple index on (address, 0) serving one wheel, split like PyPI: the index
    pages name the files host (``files_host``) for the download."""

    def __init__(self, address: str, files_host: str):
        import hashlib
        import http.server
        import threading
        self.wheel_name = "demo_pkg-0.1-py3-none-any.whl"
        wheel = _wheel("demo_pkg", "0.1")
        digest = hashlib.sha256(wheel).hexdigest()
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(f"{self.headers.get('Host', '').split(':')[0]}{self.path}")
                if self.path.rstrip("/") == "/simple/demo-pkg":
                    url = f"http://{files_host}:{outer.port}/packages/{outer.wheel_name}#sha256={digest}"
                    body, kind = f'<html><body><a href="{url}">{outer.wheel_name}</a></body></html>'.encode(), "text/html"
                elif self.path == f"/packages/{outer.wheel_name}":
                    body, kind = wheel, "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


PIP_CODE = r"""
import json, os, subprocess, sys
dest = os.path.join(os.environ.get("TMPDIR", "/tmp"), "dl")
pip = subprocess.run([sys.executable, "-m", "pip", "download", "--isolated", "--no-deps", "--no-cache-dir",
                      "--disable-pip-version-check", "--retries", "0", "--timeout", "10",
                      "--index-url", INDEX, "--trusted-host", "index.test", "--trusted-host", "files.test",
                      "-d", dest, "demo-pkg"], capture_output=True, text=True)
print(json.dumps({"rc": pip.returncode, "stderr": pip.stderr[-1500:], "files": sorted(os.listdir(dest)) if os.path.isdir(dest) else []}))
"""


def pip_download(allow: list[str]) -> dict:
    """``pip download`` of a package from a test index through a host-name allowlist (the
    PyPI preset's shape: an index host and a files host). ``PORT`` in ``allow`` stands for the
    index's port."""
    upstream = UpstreamResolver(RESOLVER_TEST_ADDRESS, {**RECORDS, "index.test": "203.0.113.84", "files.test": "203.0.113.85"})
    index = PackageIndex(SERVICES_TEST_ADDRESS, "files.test")
    try:
        code = PIP_CODE.replace("INDEX", repr(f"http://index.test:{index.port}/simple/"))
        policy = {"network": {"mode": "allowlist", "allow": [a.replace("PORT", str(index.port)) for a in allow]}}
        run_result = sandboxed(policy, code)
        result = outcome(run_result)
        result["requests"] = index.requests
        result["network_layer"] = run_result.report["layers"]["network"]
        return result
    finally:
        index.stop()
        upstream.stop()


def killed_supervisor_names() -> None:
    """A run with a host-name allowlist (so a resolver runs in its egress namespace); say so,
    then wait to be SIGKILLed by the test: the resolver must not outlive its supervisor."""
    try:
        from .scenarios import Background
    except ImportError:
        from scenarios import Background
    policy = {"network": {"mode": "allowlist", "allow": ["allowed.test:443"]}}
    Background(policy, "import time; print('running', flush=True); time.sleep(600)").wait_for(b"running")
    print("running", flush=True)
    time.sleep(600)
