"""Host-name allow entries: what the filtering resolver costs, against an IP entry measured in
the same run.

    .venv/bin/python bench/names.py [-n ITERATIONS]      (as root)

- egress bring-up (namespace + nft + slirp4netns) with an IP entry vs with a name entry (the
  same plus dnsmasq started and answering): the resolver's start cost;
- first connect from inside one sandbox: ``connect`` to an allowed address vs resolve the
  allowed name through the filtering resolver (no cache, so every lookup goes upstream and
  refills the set) then ``connect``.

Everything runs inside a network namespace made here with no route out: a local upstream
resolver (dnsmasq with a fixed record) and a local TCP service, as in the integration tests.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

OUTER_NETNS_FLAG = "SANDBOX_KERNEL_BENCH_IN_NETNS"
UPSTREAM, SERVICE, REMOTE = "198.51.100.53", "198.51.100.9", "203.0.113.80"


def reexec_in_outer_netns() -> None:
    """A namespace with loopback only; 203.0.113.0/24 is looped back to the service address,
    and resolv.conf (slirp's upstream) names the local upstream resolver."""
    if os.environ.get(OUTER_NETNS_FLAG):
        return
    if os.geteuid() != 0:
        sys.exit("bench/names.py sets up its test namespace as root")
    setup = (f"ip link set lo up && ip addr add {UPSTREAM}/32 dev lo && ip addr add {SERVICE}/32 dev lo && "
             "ip route add 203.0.113.0/24 dev lo && nft 'add table ip bench' && "
             "nft 'add chain ip bench out { type nat hook output priority -100; }' && "
             f"nft 'add rule ip bench out ip daddr 203.0.113.0/24 dnat to {SERVICE}' && "
             f'f=$(mktemp) && echo "nameserver {UPSTREAM}" > "$f" && chmod 644 "$f" && mount --bind "$f" /etc/resolv.conf && rm "$f"')
    os.environ[OUTER_NETNS_FLAG] = "1"
    argv = ["unshare", "--net", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", setup + ' && exec "$@"', "sh",
            sys.executable, *sys.argv]
    os.execvp(argv[0], argv)


def serve(sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        conn.sendall(b"hi")
        conn.close()


CONNECT_CODE = r"""
import json, socket, statistics, time
samples = []
for _ in range(COUNT):
    t0 = time.perf_counter()
    host = socket.getaddrinfo(HOSTNAME, PORT, socket.AF_INET, socket.SOCK_STREAM)[0][4][0] if HOSTNAME else ADDRESS
    s = socket.create_connection((host, PORT), timeout=10)
    s.recv(2)
    s.close()
    samples.append(time.perf_counter() - t0)
print(json.dumps({"median_ms": statistics.median(samples) * 1000}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--iterations", type=int, default=20)
    n = parser.parse_args().iterations
    reexec_in_outer_netns()

    from sandbox_kernel.capabilities import detect
    from sandbox_kernel.launch import run
    from sandbox_kernel.launch.egress import bring_up
    from sandbox_kernel.planner import RunSpec, plan
    from sandbox_kernel.policy import policy_from_dict
    from sandbox_kernel.runtime import python_runtime_paths

    server = socket.create_server((SERVICE, 0))
    port = server.getsockname()[1]
    threading.Thread(target=serve, args=(server,), daemon=True).start()
    upstream = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=", "--log-facility=-",
                                 "--no-resolv", "--no-hosts", "--user=", "--group=", f"--listen-address={UPSTREAM}",
                                 "--bind-interfaces", f"--host-record=allowed.test,{REMOTE}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        caps = detect()
        by_ip = policy_from_dict({"network": {"mode": "allowlist", "allow": [f"{REMOTE}:{port}"]}})
        by_name = policy_from_dict({"network": {"mode": "allowlist", "allow": [f"allowed.test:{port}"]}})
        spec = RunSpec(argv=("true",), runtime="shell")

        def bring_up_ms(policy) -> float:
            egress = plan(policy, caps, spec).egress
            bring_up(egress).close()  # warm-up
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                handle = bring_up(egress)
                samples.append(time.perf_counter() - t0)
                handle.close()
            return statistics.median(samples) * 1000

        def connect_ms(policy, name) -> float:
            code = (CONNECT_CODE.replace("HOSTNAME", repr(name)).replace("ADDRESS", repr(REMOTE))
                    .replace("PORT", str(port)).replace("COUNT", str(n)))
            result = run(policy, RunSpec(argv=(sys.executable, "-c", code), runtime="python",
                                         runtime_paths=python_runtime_paths()), caps=caps)
            assert result.exit_code == 0, result.stderr.decode(errors="replace")
            return json.loads(result.stdout.decode().strip().splitlines()[-1])["median_ms"]

        ip_up, name_up = bring_up_ms(by_ip), bring_up_ms(by_name)
        ip_connect, name_connect = connect_ms(by_ip, None), connect_ms(by_name, "allowed.test")
    finally:
        upstream.kill()
        upstream.wait()
    print(f"host-name entries vs an IP entry: median of {n}, supervisor uid {os.geteuid()}")
    print(f"{'':48} {'IP ms':>8} {'name ms':>8} {'x IP':>6}")
    print(f"{'egress bring-up (ns+nft+slirp [+dnsmasq])':48} {ip_up:>8.2f} {name_up:>8.2f} {name_up / ip_up:>5.2f}x")
    print(f"{'first connect from inside ([resolve +] connect)':48} {ip_connect:>8.2f} {name_connect:>8.2f} "
          f"{name_connect / ip_connect:>5.2f}x")


if __name__ == "__main__":
    main()
