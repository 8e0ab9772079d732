#!/usr/bin/env python3
"""The benchmark suite: the service side by side with its anchors, in one run on one machine.

Usage (from the repository root):

    python3 benches/suite.py                 # every scenario, medians of 5 runs
    python3 benches/suite.py --scenarios 1,5 --runs 3 --seconds 5

It builds what it measures in release mode, installs the anchors it needs (wasmtime-cli 48.x
with `cargo install` into target/anchors, wrk, nginx and perf with apt-get when missing), starts
everything on 127.0.0.1 with ports chosen by the kernel, bounds every run in time, prints a
table of absolute figures and ratios, and writes it with the date, the machine and the exact
commands into docs/benchmarks.md (between the `suite` markers). Load generator and servers
share the machine's cores; nothing is pinned (pinning the server to one core and wrk to the
other made every server slower here than sharing both).

Scenarios:
  1. in-process WASM (our proxy route, full management stack) vs `wasmtime serve`, pooling
     allocator on for both, the same plain wasi:http component, c = 1, 16, 64; the full
     stack vs the same runtime behind a bare hyper server (benches/bare_guest.rs); and what
     one request costs each server at c = 1 (CPU time, context switches, migrations, page
     faults: `perf stat` software counters);
  2. pod proxy vs direct vs nginx in front of the same container lambda's pod (Docker
     engine, loopback registry and base image made ready by deploy/local-docker.sh);
  3. upload -> first 200 for the hello lambda: cold (compile) and cache hit;
  4. scale: RSS with 1 / 100 / 1,000 idle lambdas (shared and distinct components), 1,000
     concurrent creates to `running`, list latency at 10,000 stored lambdas;
  5. per-request instantiation p50 / p99 from the service's own histogram;
  6. a Python container lambda: create -> first 200 (cold build, image cache hit) and
     requests/sec through the proxy vs its pod directly;
  7. the hello component of every common toolchain (wstd, Spin SDK, plain wit-bindgen,
     componentize-py, componentize-js, C with clang + wasi-libc), built here from
     benches/guests, ours vs `wasmtime serve` at c = 1, 16, 64 beside a static nginx
     floor, with each side's per-request kernel counters at c = 1 and, with
     --callgrind, instructions per request counted by valgrind;
  8. the PostgreSQL store (a throwaway server, Debian's PostgreSQL, fsync on): proxy req/s
     on it vs on sled (the hot path reads no record), how long a recreate made through one
     of three replicas takes to serve on the other two (p50 / p99), creates per second on
     it vs on sled, and list latency at 10,000 stored lambdas.
"""

import argparse
import concurrent.futures
import datetime
import glob
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCOUNT = "8950722f-3fd4-4223-b48f-03f95f0e8dfb"
WASMTIME_VERSION = "48.0.8"
ANCHORS = os.path.join(ROOT, "target", "anchors")
WASMTIME = os.path.join(ANCHORS, "bin", "wasmtime")
GUESTS = os.path.join(ROOT, "target", "guests", "wasm32-wasip2", "release")
# The same component for us and for `wasmtime serve`: plain wasi:http, no luna imports.
PLAIN_HELLO = os.path.join(GUESTS, "bindgen_proxy.wasm")
SDK_HELLO = os.path.join(ROOT, "target", "wasm32-wasip2", "release", "hello.wasm")
COMMANDS = []
SERVICE_ENV = {}
# Servers run as in production: a RUST_BACKTRACE inherited from a developer shell makes
# every error value capture a backtrace, which costs both servers on hot paths.
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}


def sh(*cmd, **kw):
    COMMANDS.append(" ".join(cmd))
    return subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=60):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{url} never answered")


# ---------------------------------------------------------------------------- setup

def install_tools(scenarios):
    # Debian's package of each tool (perf: the per-request counters of scenario 1).
    packages = {"wrk": "wrk", "nginx": "nginx", "perf": "linux-perf", "valgrind": "valgrind"}
    missing = [packages[tool] for tool, needed in
               (("wrk", True), ("nginx", bool({2, 7} & scenarios)),
                ("perf", bool({1, 7} & scenarios)), ("valgrind", 7 in scenarios))
               if needed and not shutil.which(tool)]
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"missing {missing}: apt-get install {' '.join(missing)}")
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing)
    if {1, 7} & scenarios and not os.path.exists(WASMTIME):
        sh("cargo", "install", "--locked", "wasmtime-cli", "--version", WASMTIME_VERSION,
           "--root", ANCHORS)


def build():
    sh("cargo", "build", "--release", "--bin", "luna-lambda")
    sh("cargo", "build", "--release", "--bench", "bare_guest")
    sh("cargo", "build", "--release", "--target", "wasm32-wasip2", "-p", "hello")
    sh("cargo", "build", "--release", "--target", "wasm32-wasip2",
       "--manifest-path", "tests/guests/Cargo.toml",
       env=dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target", "guests")))


def archive(workdir, wasm_path, tag=None):
    """A lambda archive; with a tag, a distinct component (a custom section added)."""
    with open(wasm_path, "rb") as f:
        wasm = f.read()
    name = os.path.basename(wasm_path)
    if tag is not None:
        payload = b"\x05bench" + tag.to_bytes(4, "little")
        wasm += bytes([0, len(payload)]) + payload
        name = f"{tag}-{name}"
    path = os.path.join(workdir, name + ".zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("lambda.wasm", wasm)
    return path


class Service:
    """`luna-lambda serve` on 127.0.0.1:0 with a fresh data directory."""

    def __init__(self, workdir, env=None, wrapper=()):
        self.data = tempfile.mkdtemp(prefix="data-", dir=workdir)
        environment = dict(CLEAN_ENV, LUNA_LAMBDA_LOG_LEVEL="warn", **SERVICE_ENV, **(env or {}))
        self.proc = subprocess.Popen(
            [*wrapper, os.path.join(ROOT, "target/release/luna-lambda"), "serve",
             "--listen", "127.0.0.1:0", "--data-dir", self.data],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if wrapper else None,
            env=environment, text=True)
        self.base = re.search(r"listening on (\S+)", self.proc.stdout.readline()).group(1)

    def create(self, archive_path, name):
        out = subprocess.run(
            ["curl", "-s", "-H", f"Luna-Account-Id: {ACCOUNT}",
             "-F", f"archive=@{archive_path};type=application/zip",
             "-F", 'credentials={"token":"bench"};type=application/json',
             "-F", f'parameters={{"lambda_name":"{name}"}};type=application/json',
             f"{self.base}/1/lambdas"],
            check=True, capture_output=True, text=True).stdout
        return json.loads(out)["lambda_id"]

    def status(self, lambda_id):
        with urllib.request.urlopen(f"{self.base}/1/lambdas/{lambda_id}/status") as r:
            return json.load(r)["status"]

    def wait_running(self, lambda_id, timeout=600):
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            status = self.status(lambda_id)
            if status == "running":
                return
            if status == "failed":
                with urllib.request.urlopen(f"{self.base}/1/lambdas/{lambda_id}/image/logs") as r:
                    lines = json.load(r).get("logs", [])
                raise RuntimeError(f"{lambda_id} failed; image logs:\n" + "\n".join(map(str, lines[-30:])))
            time.sleep(0.01)
        raise RuntimeError(f"{lambda_id} never ran")

    def proxy_url(self, lambda_id, path="/hello"):
        return f"{self.base}/1/lambdas/{lambda_id}/proxy{path}"

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024

    def metrics(self):
        with urllib.request.urlopen(f"{self.base}/metrics") as r:
            return r.read().decode()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


# ---------------------------------------------------------------------------- load

def parse_duration(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def wrk_once(url, connections, seconds):
    threads = 1 if connections == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
           "-H", f"Luna-Account-Id: {ACCOUNT}", url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {m.group(1): parse_duration(m.group(2))
           for m in re.finditer(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failures = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return rps, lat["50"], lat["99"], failures, " ".join(cmd[:-1]) + " URL"


def wrk_median(url, connections, runs, seconds):
    results = [wrk_once(url, connections, seconds) for _ in range(runs)]
    COMMANDS.append(results[0][4])
    return (statistics.median(r[0] for r in results),
            statistics.median(r[1] for r in results),
            statistics.median(r[2] for r in results),
            sum(r[3] for r in results))


def ms(seconds):
    return f"{seconds * 1000:.2f} ms"


# ---------------------------------------------------------------------------- scenarios

def scenario_throughput(work, args, rows):
    """1: our proxy route vs `wasmtime serve` on the same component."""
    service = Service(work)
    port = free_port()
    wasmtime = wasmtime_serve(port, PLAIN_HELLO)
    bare = subprocess.Popen([bare_guest_binary(), PLAIN_HELLO], stdout=subprocess.PIPE, text=True,
                            env=CLEAN_ENV)
    COMMANDS.append("target/release/deps/bare_guest-* tests/guests/.../bindgen_proxy.wasm "
                    "(benches/bare_guest.rs: the runtime behind a bare hyper server)")
    try:
        bare_url = re.search(r"listening on (\S+)", bare.stdout.readline()).group(1) + "/hello"
        lambda_id = service.create(archive(work, PLAIN_HELLO), "plain-hello")
        service.wait_running(lambda_id)
        ours_url = service.proxy_url(lambda_id)
        anchor_url = f"http://127.0.0.1:{port}/hello"
        wait_http(anchor_url)
        for connections in (1, 16, 64):
            ours = wrk_median(ours_url, connections, args.runs, args.seconds)
            anchor = wrk_median(anchor_url, connections, args.runs, args.seconds)
            rows.append((f"1. req/s, c={connections}", f"{ours[0]:,.0f}", f"{anchor[0]:,.0f}",
                         f"{ours[0] / anchor[0]:.2f}×", "wasmtime serve"))
            rows.append((f"1. p50 / p99, c={connections}",
                         f"{ms(ours[1])} / {ms(ours[2])}", f"{ms(anchor[1])} / {ms(anchor[2])}",
                         f"{anchor[1] / ours[1]:.2f}× / {anchor[2] / ours[2]:.2f}×",
                         "wasmtime serve (ratio > 1: ours faster)"))
            if ours[3] or anchor[3]:
                rows.append((f"1. failed responses, c={connections}", str(ours[3]), str(anchor[3]),
                             "", "non-2xx + socket errors"))
            bare_run = wrk_median(bare_url, connections, args.runs, args.seconds)
            rows.append((f"1. full stack vs bare guest: req/s (p50), c={connections}",
                         f"{ours[0]:,.0f} ({ms(ours[1])})", f"{bare_run[0]:,.0f} ({ms(bare_run[1])})",
                         f"{ours[0] / bare_run[0]:.2f}×",
                         "the same runtime behind a bare hyper server (no request id, tenancy, "
                         "routing, metrics, spans)"))
        per_request_costs(service.proc.pid, ours_url, wasmtime.pid, anchor_url, args, rows)
        scenario_instantiation(service, lambda_id, rows)
    finally:
        for process in (wasmtime, bare):
            process.terminate()
            process.wait()
        service.stop()


PERF_EVENTS = "task-clock,context-switches,cpu-migrations,page-faults"
# System calls entered (a tracepoint: needs tracefs, which not every kernel offers).
SYSCALL_EVENT = "raw_syscalls:sys_enter"


def perf_events():
    probe = subprocess.run(["perf", "stat", "-e", SYSCALL_EVENT, "true"], capture_output=True)
    return PERF_EVENTS + (f",{SYSCALL_EVENT}" if probe.returncode == 0 else "")


def perf_counted(pid, url, seconds):
    """One wrk run at c = 1 with `perf stat` (software counters: they need no hardware PMU,
    which virtual machines often lack) attached to the server `pid`: its CPU time, context
    switches, migrations and page faults per request."""
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", perf_events(), "-p", str(pid),
                             "--", "sleep", str(seconds + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # attached before the load starts
    requests = wrk_once(url, 1, seconds)[0] * seconds
    _, err = perf.communicate()
    counts = {}
    for line in err.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].replace(".", "", 1).isdigit():
            counts[fields[2]] = float(fields[0])
    return {name: value / requests for name, value in counts.items()}


def per_request_costs(ours_pid, ours_url, anchor_pid, anchor_url, args, rows,
                      label="1. per request at c=1"):
    """1: what one request costs each server at c = 1, counted by the kernel (why c = 1
    figures move between machines: a hand-off between threads is a context switch, and
    waking an idle vCPU is what a slow c = 1 pays for)."""
    if not shutil.which("perf"):
        rows.append((label, "perf not installed", "", "", ""))
        return
    ours = perf_counted(ours_pid, ours_url, args.seconds)
    anchor = perf_counted(anchor_pid, anchor_url, args.seconds)
    COMMANDS.append(f"perf stat -x , -e {perf_events()} -p PID -- sleep {args.seconds + 1} "
                    f"(beside wrk -c1 -d{args.seconds}s)")
    for event, name, scale, unit in (("task-clock", "CPU time", 1e3, "µs"),
                                     ("context-switches", "context switches", 1, ""),
                                     ("cpu-migrations", "CPU migrations", 1, ""),
                                     ("page-faults", "page faults", 1, ""),
                                     (SYSCALL_EVENT, "system calls", 1, "")):
        if event not in ours or event not in anchor:
            continue
        # task-clock is reported in ms.
        mine, theirs = ours[event] * scale, anchor[event] * scale
        ratio = f"{theirs / mine:.2f}×" if mine > 0 else ""
        rows.append((f"{label}: {name}", f"{mine:.2f}{unit}",
                     f"{theirs:.2f}{unit}", ratio,
                     "wasmtime serve, perf stat software counters (ratio > 1: ours cheaper)"))


def bare_guest_binary():
    """The executable `cargo build --release --bench bare_guest` produced."""
    out = subprocess.run(["cargo", "build", "--release", "--bench", "bare_guest",
                          "--message-format=json"], check=True, cwd=ROOT, capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        message = json.loads(line)
        if message.get("target", {}).get("name") == "bare_guest" and message.get("executable"):
            return message["executable"]
    raise RuntimeError("no bare_guest executable")


def histogram_quantiles(text, metric, lambda_id, quantiles):
    """Quantiles of a Prometheus histogram, interpolated within buckets as
    `histogram_quantile` does."""
    pattern = re.compile(
        rf'^{metric}_bucket{{[^}}]*lambda_id="{lambda_id}"[^}}]*le="([^"]+)"[^}}]*}} (\S+)$')
    buckets = sorted((float("inf") if m.group(1) == "+Inf" else float(m.group(1)),
                      float(m.group(2)))
                     for m in map(pattern.match, text.splitlines()) if m)
    total = buckets[-1][1]
    out = []
    for q in quantiles:
        rank, lower, lower_count = q * total, 0.0, 0.0
        for le, count in buckets:
            if count >= rank:
                share = (rank - lower_count) / max(count - lower_count, 1e-9)
                out.append(lower if le == float("inf") else lower + (le - lower) * share)
                break
            lower, lower_count = le, count
    return out, int(total)


def scenario_instantiation(service, lambda_id, rows):
    """5: instantiation from the pool, as the service measures it."""
    (p50, p99), total = histogram_quantiles(
        service.metrics(), "lambda_instantiate_seconds", lambda_id, (0.5, 0.99))
    rows.append((f"5. instantiation p50 / p99 ({total:,} requests of scenario 1)",
                 f"{p50 * 1e6:.1f} µs / {p99 * 1e6:.1f} µs", "10 µs / 50 µs",
                 f"{0.00001 / p50:.2f}× / {0.00005 / p99:.2f}×", "target (ratio ≥ 1: met)"))


UPSTREAM_DOCKERFILE = """FROM luna-lambda/debian-python-rootfs:bookworm
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light && rm -rf /var/lib/apt/lists/*
COPY upstream.conf /etc/upstream.conf
COPY start.sh /start.sh
CMD ["sh", "/start.sh"]
"""
UPSTREAM_START = """sed "s/@PORT@/$PORT/; s/@HOST@/$LUNA_LAMBDA_LISTEN_HOST/" /etc/upstream.conf > /tmp/nginx.conf
exec nginx -c /tmp/nginx.conf -g 'daemon off;'
"""
# Pods run without CAP_CHOWN / CAP_SETUID: nginx stays the user it starts as.
UPSTREAM_CONF = """worker_processes 1;
user root root;
pid /tmp/nginx.pid;
error_log /dev/null;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path /tmp/nginx-body;
  server {
    listen @HOST@:@PORT@;
    location / { return 200 "hello from the upstream\\n"; }
  }
}
"""


def container_service(work):
    """The service with the Docker backend (engine, registry and base image made ready)."""
    sh(os.path.join(ROOT, "deploy", "local-docker.sh"))
    # The nginx stand-in pod builds on the rootfs image, so the operator allows it.
    return Service(work, env={"LUNA_LAMBDA_CONTAINER_BACKEND": "docker",
                              "LUNA_LAMBDA_CONTAINERS_REGISTRY": "127.0.0.1:5000",
                              "LUNA_LAMBDA_CONTAINERS_ALLOWED_BASE_IMAGES":
                                  "luna-lambda/python:bookworm,"
                                  "luna-lambda/debian-python-rootfs:bookworm"})


def pod_port(lambda_id):
    out = subprocess.run(
        ["docker", "ps", "--filter", f"label=luna-lambda.lambda-id={lambda_id}",
         "--format", '{{.Label "luna-lambda.port"}}'],
        check=True, capture_output=True, text=True).stdout.split()
    return int(out[0])


def scenario_pod_proxy(work, args, rows):
    """2: our pod proxy vs calling the pod directly vs nginx in front of the same pod.

    The stand-in lambda is a Dockerfile lambda whose container runs nginx answering 200
    itself, so all three paths end at the same upstream process."""
    service = container_service(work)
    path = os.path.join(work, "upstream.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Dockerfile", UPSTREAM_DOCKERFILE)
        z.writestr("start.sh", UPSTREAM_START)
        z.writestr("upstream.conf", UPSTREAM_CONF)
    nginx = lambda_id = None
    try:
        lambda_id = service.create(path, "upstream")
        service.wait_running(lambda_id)
        upstream_port, nginx_port = pod_port(lambda_id), free_port()
        conf = os.path.join(work, "nginx-proxy.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(port=nginx_port, upstream=upstream_port, work=work,
                                      name="proxy",
                                      location="proxy_pass http://lambda; proxy_http_version 1.1; "
                                               'proxy_set_header Connection "";'))
        nginx = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        COMMANDS.append("stand-in lambda: a Dockerfile lambda running nginx that answers 200 "
                        "itself; anchor: nginx -c nginx-proxy.conf (proxy_pass to the pod, "
                        "keepalive 64)")
        direct_url = f"http://127.0.0.1:{upstream_port}/main"
        nginx_url = f"http://127.0.0.1:{nginx_port}/main"
        ours_url = service.proxy_url(lambda_id, "/main")
        wait_http(nginx_url)
        for connections in (1, 16, 64):
            direct = wrk_median(direct_url, connections, args.runs, args.seconds)
            ours = wrk_median(ours_url, connections, args.runs, args.seconds)
            proxied = wrk_median(nginx_url, connections, args.runs, args.seconds)
            failures = f"; {ours[3]} failed requests" if ours[3] else ""
            rows.append((f"2. added p50 / req/s, c={connections}",
                         f"{ms(ours[1] - direct[1])} / {ours[0]:,.0f}",
                         f"{ms(proxied[1] - direct[1])} / {proxied[0]:,.0f}",
                         f"{ours[0] / proxied[0]:.2f}× req/s",
                         f"nginx in front of the same pod (direct: p50 {ms(direct[1])}, "
                         f"{direct[0]:,.0f} req/s; ours p99 {ms(ours[2])}, nginx p99 "
                         f"{ms(proxied[2])}){failures}"))
    finally:
        if nginx:
            nginx.terminate()
            nginx.wait()
        if lambda_id:
            delete(service, lambda_id)
        service.stop()


def delete(service, lambda_id):
    request = urllib.request.Request(f"{service.base}/1/lambdas/{lambda_id}", method="DELETE")
    with urllib.request.urlopen(request):
        pass


PYTHON_HELLO = """async def main(request):
    return {"hello": "world", "bytes": len(request.body)}
"""


def scenario_python_lambda(work, args, rows):
    """6: a Python container lambda: build cold and cached, create -> first 200, and
    requests/sec through our proxy vs calling its pod directly."""
    service = container_service(work)
    created = []
    try:
        def create_and_time(tag, name):
            path = os.path.join(work, f"python-{tag}.zip")
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
                # A distinct comment makes a distinct archive: a cold build.
                z.writestr("lambda_main.py", f"# {tag}\n" + PYTHON_HELLO)
            started = time.monotonic()
            lambda_id = service.create(path, name)
            created.append(lambda_id)
            elapsed = first_200(service, lambda_id, started)
            return lambda_id, elapsed, path

        tag = f"{time.time_ns()}"
        cold_id, cold, path = create_and_time(tag, "python-cold")
        started = time.monotonic()
        cached_id = service.create(path, "python-cached")
        created.append(cached_id)
        cached = first_200(service, cached_id, started)
        rows.append(("6. Python hello: create → first 200, cold build / image cache hit",
                     f"{cold * 1000:,.0f} ms / {cached * 1000:,.0f} ms", "", "",
                     "generated Dockerfile on luna-lambda/python:bookworm, push to the "
                     "loopback registry, 1 pod, health waited"))
        direct_url = f"http://127.0.0.1:{pod_port(cold_id)}/main"
        ours_url = service.proxy_url(cold_id, "/main")
        for connections in (1, 16):
            direct = wrk_median(direct_url, connections, args.runs, args.seconds)
            ours = wrk_median(ours_url, connections, args.runs, args.seconds)
            rows.append((f"6. Python hello req/s (p50), c={connections}",
                         f"{ours[0]:,.0f} ({ms(ours[1])})", f"{direct[0]:,.0f} ({ms(direct[1])})",
                         f"{ours[0] / direct[0]:.2f}×",
                         "through our proxy vs the pod directly (the runner, 1 worker)"))
    finally:
        for lambda_id in created:
            delete(service, lambda_id)
        service.stop()


NGINX_CONF = """
worker_processes 1;
pid {work}/nginx-{name}.pid;
error_log /dev/null;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-{name}-body;
  proxy_temp_path {work}/nginx-{name}-proxy;
  fastcgi_temp_path {work}/nginx-{name}-fastcgi;
  uwsgi_temp_path {work}/nginx-{name}-uwsgi;
  scgi_temp_path {work}/nginx-{name}-scgi;
  upstream lambda {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ {location} }}
  }}
}}
"""


def first_200(service, lambda_id, started, timeout=120):
    url = service.proxy_url(lambda_id, "/main")
    while time.monotonic() - started < timeout:
        try:
            request = urllib.request.Request(url, headers={"Luna-Account-Id": ACCOUNT})
            with urllib.request.urlopen(request) as r:
                if r.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError("the lambda never answered")


def scenario_upload(work, args, rows):
    """3: upload -> first 200, cold compile and cache hit."""
    service = Service(work)
    try:
        cold, warm = [], []
        for run in range(args.runs):
            fresh = archive(work, SDK_HELLO, tag=10_000 + run)
            started = time.monotonic()
            cold.append(first_200(service, service.create(fresh, f"cold{run}"), started))
            started = time.monotonic()
            warm.append(first_200(service, service.create(fresh, f"warm{run}"), started))
        rows.append(("3. upload → first 200, cold (compile)", ms(statistics.median(cold)),
                     "1000 ms", f"{1.0 / statistics.median(cold):.2f}×", "target (≥ 1: met)"))
        rows.append(("3. upload → first 200, cache hit", ms(statistics.median(warm)),
                     "150 ms", f"{0.150 / statistics.median(warm):.2f}×", "target (≥ 1: met)"))
    finally:
        service.stop()


def list_latency(creator, lister, archive_path, stored, wanted):
    """Creates lambdas through `creator` until `wanted` are stored (`stored` are), then
    times 200 list pages through `lister`: (lambdas stored, p50, p99)."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: creator.create(archive_path, f"stored{i}"),
                      range(max(0, wanted - stored))))
    url = f"{lister.base}/1/lambdas?page_size=100&page=3"
    samples = []
    for _ in range(200):
        started = time.perf_counter()
        with urllib.request.urlopen(url) as r:
            r.read()
        samples.append(time.perf_counter() - started)
    samples.sort()
    return max(stored, wanted), samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def scenario_scale(work, args, rows):
    """4: idle RSS, concurrent creates, list latency."""
    service = Service(work)
    try:
        shared = archive(work, SDK_HELLO)
        # The first lambda brings the engine's and the pool's fixed costs: it is the
        # baseline the others are measured against.
        ids = [service.create(shared, "shared0")]
        service.wait_running(ids[0])
        baseline = service.rss_mib()
        rows.append(("4. RSS with 1 idle lambda loaded (service total)", f"{baseline:,.1f} MiB",
                     "", "", ""))
        for target in (100, args.idle):
            ids += [service.create(shared, f"shared{i}") for i in range(len(ids), target)]
            for lambda_id in ids:
                service.wait_running(lambda_id)
            per = (service.rss_mib() - baseline) * 1024 / (len(ids) - 1)
            rows.append((f"4. RSS per idle lambda, {len(ids)} loaded, one shared component",
                         f"{per:,.0f} KiB", "2048 KiB", f"{2048 / max(per, 1):.2f}×",
                         "target (≥ 1: met)"))
        before = service.rss_mib()
        distinct = [archive(work, SDK_HELLO, tag=i) for i in range(args.distinct)]
        distinct_ids = [service.create(path, f"distinct{i}") for i, path in enumerate(distinct)]
        for lambda_id in distinct_ids:
            service.wait_running(lambda_id)
        per = (service.rss_mib() - before) * 1024 / len(distinct_ids)
        rows.append((f"4. RSS per idle lambda, {len(distinct_ids)} distinct components",
                     f"{per:,.0f} KiB", "2048 KiB", f"{2048 / max(per, 1):.2f}×",
                     "target (≥ 1: met)"))

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            created = list(pool.map(lambda i: service.create(shared, f"burst{i}"),
                                    range(args.burst)))
            list(pool.map(service.wait_running, created))
        rows.append((f"4. {args.burst:,} concurrent creates → all running",
                     f"{time.monotonic() - started:.1f} s", "all running", "", "no errors"))

        stored, p50, p99 = list_latency(service, service, shared,
                                        len(ids) + len(distinct_ids) + len(created), args.stored)
        rows.append((f"4. list page_size=100 at {stored:,} lambdas: p50 / p99",
                     f"{ms(p50)} / {ms(p99)}", "5 ms (p50)", f"{0.005 / p50:.2f}×",
                     "target (≥ 1: met)"))
    finally:
        service.stop()


# ---------------------------------------------------------------------------- toolchains

TOOLCHAIN_GUESTS = os.path.join(ROOT, "benches", "guests")
TOOLCHAIN_TARGET = os.path.join(ROOT, "target", "bench-guests")
COMPONENTIZE_PY = "0.25.1"
COMPONENTIZE_JS = "0.23.0"
# StarlingMonkey in componentize-js 0.23 exports wasi:http 0.2.10; the WIT it is given
# must name that version (WASI 0.2 minor versions are compatible).
STARLINGMONKEY_WASI = "0.2.10"
WIT_BINDGEN = "0.57.1"
WASI_VERSION = "0.2.12"


def install_toolchains():
    """The toolchains of scenario 7 that the machine lacks: clang + wasi-libc (Debian),
    wit-bindgen (crates.io), componentize-py (PyPI) and componentize-js (npm), the last
    three into target/anchors."""
    debian = [package for package, present in (
        ("clang", shutil.which("clang")), ("lld", shutil.which("wasm-ld")),
        ("wasi-libc", os.path.exists("/usr/lib/wasm32-wasi/libc.a")),
        ("libclang-rt-14-dev-wasm32",
         glob.glob("/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a")),
    ) if not present]
    if debian:
        if os.geteuid() != 0:
            sys.exit(f"missing {debian}: apt-get install {' '.join(debian)}")
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *debian)
    if not os.path.exists(os.path.join(ANCHORS, "bin", "wit-bindgen")):
        sh("cargo", "install", "--locked", "wit-bindgen-cli", "--version", WIT_BINDGEN,
           "--root", ANCHORS)
    python = os.path.join(ANCHORS, "py")
    if not os.path.exists(os.path.join(python, "bin", "componentize-py")):
        sh(sys.executable, "-m", "venv", python)
        sh(os.path.join(python, "bin", "pip"), "install", "-q",
           f"componentize-py=={COMPONENTIZE_PY}")
    js = os.path.join(ANCHORS, "js")
    if not os.path.exists(os.path.join(js, "node_modules", ".bin", "componentize-js")):
        os.makedirs(js, exist_ok=True)
        sh("npm", "install", "--silent", "--prefix", js,
           f"@bytecodealliance/componentize-js@{COMPONENTIZE_JS}")


def wasm_component_ld():
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], check=True, capture_output=True,
                             text=True).stdout.strip()
    host = re.search(r"host: (\S+)", subprocess.run(
        ["rustc", "-vV"], check=True, capture_output=True, text=True).stdout).group(1)
    return os.path.join(sysroot, "lib", "rustlib", host, "bin", "wasm-component-ld")


def build_toolchain_guests(work):
    """The hello component of each common toolchain, built here from benches/guests:
    [(toolchain, path)]. The plain wit-bindgen one is the suite's PLAIN_HELLO."""
    sh("cargo", "build", "--release", "--target", "wasm32-wasip2",
       "--manifest-path", "benches/guests/Cargo.toml",
       env=dict(os.environ, CARGO_TARGET_DIR=TOOLCHAIN_TARGET))
    built = os.path.join(TOOLCHAIN_TARGET, "wasm32-wasip2", "release")
    out = os.path.join(work, "toolchains")
    os.makedirs(out, exist_ok=True)
    wit = os.path.join(ROOT, "wit")
    world = f"wasi:http/proxy@{WASI_VERSION}"

    python = os.path.join(out, "python.wasm")
    sh(os.path.join(ANCHORS, "py", "bin", "componentize-py"), "-d", wit, "-w", world,
       "componentize", "-p", os.path.join(TOOLCHAIN_GUESTS, "python"), "app", "-o", python)

    # componentize-js's WIT: ours, at the WASI version its engine exports.
    js_wit = os.path.join(work, "js-wit")
    shutil.copytree(os.path.join(wit, "deps"), os.path.join(js_wit, "deps"))
    for folder, _, files in os.walk(js_wit):
        for name in files:
            path = os.path.join(folder, name)
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                # Package versions and `@since` gates alike.
                f.write(text.replace(WASI_VERSION, STARLINGMONKEY_WASI))
    with open(os.path.join(js_wit, "hello.wit"), "w") as f:
        f.write(f"package bench:hello;\nworld hello {{ include wasi:http/proxy@{STARLINGMONKEY_WASI}; }}\n")
    javascript = os.path.join(out, "javascript.wasm")
    sh(os.path.join(ANCHORS, "js", "node_modules", ".bin", "componentize-js"), "--wit", js_wit,
       "-n", "hello", "-o", javascript, os.path.join(TOOLCHAIN_GUESTS, "javascript", "app.js"))

    c_dir = os.path.join(work, "c")
    os.makedirs(c_dir, exist_ok=True)
    sh(os.path.join(ANCHORS, "bin", "wit-bindgen"), "c", wit, "-w", world, "--out-dir", c_dir)
    c = os.path.join(out, "c.wasm")
    sh("clang", "--target=wasm32-wasi", "-O2", "-mexec-model=reactor", f"-I{c_dir}",
       f"-fuse-ld={wasm_component_ld()}", f"-Wl,--wasm-ld-path={shutil.which('wasm-ld')}",
       "-o", c, os.path.join(TOOLCHAIN_GUESTS, "c", "hello.c"),
       os.path.join(c_dir, "proxy.c"), os.path.join(c_dir, "proxy_component_type.o"))
    return [("wstd", os.path.join(built, "wstd_hello.wasm")),
            ("Spin SDK", os.path.join(built, "spin_hello.wasm")),
            ("wit-bindgen", PLAIN_HELLO),
            ("componentize-py", python),
            ("componentize-js", javascript),
            ("C (clang + wasi-libc)", c)]


def wasmtime_serve(port, wasm):
    """`wasmtime serve` on `wasm`, pooling allocator on; `-S cli`: Rust std imports
    wasi:cli (environment, exit) even in a pure HTTP handler."""
    command = [WASMTIME, "serve", "--addr", f"127.0.0.1:{port}", "-O", "pooling-allocator=y",
               "-S", "cli=y", wasm]
    COMMANDS.append(" ".join(command[:-1]).replace(ROOT + "/", "") + " COMPONENT.wasm")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=CLEAN_ENV)


def static_floor(work):
    """nginx answering a constant 200 itself: what a static server does here with this
    load generator (at c = 1 the figure is set by how fast an idle vCPU wakes, not by
    the server's work)."""
    port = free_port()
    conf = os.path.join(work, "nginx-floor.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(port=port, upstream=free_port(), work=work, name="floor",
                                  location='return 200 "hello\\n";'))
    nginx = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    COMMANDS.append('floor: nginx -c nginx-floor.conf (worker_processes 1; return 200 "hello")')
    return nginx, f"http://127.0.0.1:{port}/hello"


def scenario_toolchains(work, args, rows):
    """7: the hello component of every common toolchain, ours vs `wasmtime serve` side by
    side, c = 1, 16, 64, with what one request costs each server at c = 1."""
    install_toolchains()
    guests = build_toolchain_guests(work)
    service = Service(work)
    nginx, floor_url = static_floor(work)
    try:
        wait_http(floor_url)
        for connections in (1, 16, 64):
            result = wrk_median(floor_url, connections, args.runs, args.seconds)
            rows.append((f"7. floor: req/s (p50), c={connections}",
                         f"{result[0]:,.0f} ({ms(result[1])})", "", "",
                         "for scale: nginx answering 200 itself (no WASM, one worker)"))
        for toolchain, wasm in guests:
            lambda_id = service.create(archive(work, wasm), re.sub(r"\W+", "-", toolchain).strip("-").lower())
            service.wait_running(lambda_id)
            port = free_port()
            anchor_process = wasmtime_serve(port, wasm)
            anchor_url = f"http://127.0.0.1:{port}/hello"
            try:
                wait_http(anchor_url, timeout=300)
                ours_url = service.proxy_url(lambda_id)
                for connections in (1, 16, 64):
                    ours = wrk_median(ours_url, connections, args.runs, args.seconds)
                    anchor = wrk_median(anchor_url, connections, args.runs, args.seconds)
                    failures = (f"; failed responses: ours {ours[3]}, wasmtime serve {anchor[3]}"
                                if ours[3] or anchor[3] else "")
                    rows.append((f"7. {toolchain}: req/s (p50 / p99), c={connections}",
                                 f"{ours[0]:,.0f} ({ms(ours[1])} / {ms(ours[2])})",
                                 f"{anchor[0]:,.0f} ({ms(anchor[1])} / {ms(anchor[2])})",
                                 f"{ours[0] / anchor[0]:.2f}×", "wasmtime serve" + failures))
                per_request_costs(service.proc.pid, ours_url, anchor_process.pid, anchor_url,
                                  args, rows, label=f"7. {toolchain}: per request at c=1")
                if args.callgrind:
                    callgrind_rows(work, toolchain, wasm, rows)
            finally:
                anchor_process.terminate()
                anchor_process.wait()
    finally:
        nginx.terminate()
        nginx.wait()
        service.stop()

CALLGRIND_REQUESTS = 300
# Components bigger than this (the interpreters' ones) take tens of minutes to compile
# under valgrind, so their instruction counts are left out.
CALLGRIND_MAX_WASM = 1 << 20


def counted_requests(pid, host_port, path):
    """Instructions (callgrind, of every thread of `pid`) per request over
    CALLGRIND_REQUESTS keep-alive requests at c = 1, after a warm-up."""
    import http.client
    connection = http.client.HTTPConnection(*host_port, timeout=120)

    def requests(n):
        for _ in range(n):
            connection.request("GET", path, headers={"Luna-Account-Id": ACCOUNT})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status}")

    requests(30)
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    requests(CALLGRIND_REQUESTS)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    connection.close()


def callgrind_total(pattern):
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            for line in f:
                if line.startswith("summary:"):
                    return int(line.split()[1])
    raise RuntimeError(f"no callgrind dump {pattern}")


def callgrind_rows(work, toolchain, wasm, rows):
    """User-space instructions per request of each server (valgrind --tool=callgrind):
    a count that does not depend on the machine's speed or load, unlike requests/sec."""
    if os.path.getsize(wasm) > CALLGRIND_MAX_WASM:
        rows.append((f"7. {toolchain}: instructions per request", "not counted", "", "",
                     "component too large to compile under valgrind in the suite's time"))
        return
    valgrind = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file"]
    ours_dump = os.path.join(work, f"callgrind.ours.{os.getpid()}.{len(rows)}")
    # Small pools on both sides: valgrind cannot reserve the default pools' address space.
    service = Service(work, env={"LUNA_LAMBDA_ENGINE_POOL_INSTANCES": "2"},
                      wrapper=[*valgrind, f"--callgrind-out-file={ours_dump}"])
    try:
        lambda_id = service.create(archive(work, wasm), "counted")
        service.wait_running(lambda_id)
        host, port = service.base.removeprefix("http://").split(":")
        counted_requests(service.proc.pid, (host, int(port)),
                         f"/1/lambdas/{lambda_id}/proxy/hello")
        ours = callgrind_total(ours_dump + ".*")
    finally:
        service.stop()
    anchor_dump = os.path.join(work, f"callgrind.anchor.{os.getpid()}.{len(rows)}")
    port = free_port()
    anchor = subprocess.Popen(
        [*valgrind, f"--callgrind-out-file={anchor_dump}", WASMTIME, "serve",
         "--addr", f"127.0.0.1:{port}", "-O", "pooling-allocator=y",
         "-O", "pooling-total-memories=8", "-O", "pooling-total-tables=8",
         "-O", "pooling-total-core-instances=40", "-O", "pooling-total-component-instances=2",
         "-O", "pooling-total-stacks=2", "-S", "cli=y", wasm],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=CLEAN_ENV)
    try:
        wait_http(f"http://127.0.0.1:{port}/hello", timeout=900)
        counted_requests(anchor.pid, ("127.0.0.1", port), "/hello")
        theirs = callgrind_total(anchor_dump + ".*")
    finally:
        anchor.terminate()
        anchor.wait()
    COMMANDS.append(f"valgrind --tool=callgrind --smc-check=all-non-file SERVER (small pools), "
                    f"callgrind_control -z / -d around {CALLGRIND_REQUESTS} requests at c=1")
    rows.append((f"7. {toolchain}: instructions per request",
                 f"{ours / CALLGRIND_REQUESTS:,.0f}", f"{theirs / CALLGRIND_REQUESTS:,.0f}",
                 f"{theirs / ours:.2f}×",
                 "wasmtime serve, user-space instructions counted by callgrind (ratio > 1: "
                 "ours fewer)"))

# ---------------------------------------------------------------------------- report

# ---------------------------------------------------------------------------- replicas

class ThrowawayPostgres:
    """initdb in a temporary directory and a server on a free loopback port (as the
    `postgres` user when run as root), stopped and removed at the end."""

    def __init__(self, workdir):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            sh("apt-get", "install", "-y", "-q", "postgresql")
            bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        self.bin = os.path.dirname(bins[-1])
        self.dir = tempfile.mkdtemp(prefix="pg-", dir=workdir)
        self.port = free_port()
        if os.geteuid() == 0:
            uid = int(subprocess.run(["id", "-u", "postgres"], check=True, capture_output=True,
                                     text=True).stdout)
            os.chown(workdir, uid, uid)
            os.chown(self.dir, uid, uid)
        self.run("initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres")
        self.run("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/server.log", "-w",
                 "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                       "-c max_connections=200", "start")
        self.url = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def run(self, program, *args):
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, os.path.join(self.bin, program), *args], check=True,
                       capture_output=True, cwd=self.dir)

    def stop(self):
        self.run("pg_ctl", "-D", f"{self.dir}/data", "-m", "immediate", "-w", "stop")


def postgres_env(database):
    return {"LUNA_LAMBDA_STORE_BACKEND": "postgres",
            "LUNA_LAMBDA_STORE_POSTGRES_URL": database.url,
            "LUNA_LAMBDA_ENCRYPTION_KEY": "bHVuYS1sYW1iZGEtdGVzdC1rZXktMzItYnl0ZXMhISE="}


def serving_version(url):
    try:
        with urllib.request.urlopen(urllib.request.Request(
                url, headers={"Luna-Account-Id": ACCOUNT}), timeout=5) as r:
            return r.headers.get("Lambda-Version")
    except OSError:
        return None


def recreate(service, lambda_id, archive_path):
    subprocess.run(
        ["curl", "-sf", "-X", "PUT", "-H", f"Luna-Account-Id: {ACCOUNT}",
         "-F", f"archive=@{archive_path};type=application/zip",
         "-F", 'credentials={"token":"bench"};type=application/json',
         f"{service.base}/1/lambdas/{lambda_id}"],
        check=True, capture_output=True)


def creates_per_second(service, shared, count):
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: service.create(shared, f"rate{i}"), range(count)))
    return count / (time.monotonic() - started)


def scenario_replicas(work, args, rows):
    """8: the PostgreSQL store and three replicas on it."""
    database = ThrowawayPostgres(work)
    COMMANDS.append(f"{database.bin}/initdb + pg_ctl start (throwaway server, fsync on)")
    services = []
    try:
        sled = Service(work)
        services.append(sled)
        replicas = [Service(work, env=postgres_env(database)) for _ in range(3)]
        services += replicas
        plain = archive(work, PLAIN_HELLO)
        on_sled = sled.create(plain, "plain-hello")
        on_pg = replicas[0].create(plain, "plain-hello")
        sled.wait_running(on_sled)
        replicas[0].wait_running(on_pg)
        for connections in (1, 16):
            # Interleaved, the order swapped every run: the two sides differ by less
            # than this machine drifts over a minute.
            COMMANDS.append(f"wrk -t{1 if connections == 1 else 2} -c{connections} "
                            f"-d{args.seconds}s, PostgreSQL replica and sled service in turn")
            pg, anchor = [], []
            for run in range(args.runs * 2):
                sides = [(pg, replicas[0].proxy_url(on_pg)), (anchor, sled.proxy_url(on_sled))]
                for samples, url in sides if run % 2 == 0 else reversed(sides):
                    samples.append(wrk_once(url, connections, args.seconds)[0])
            pg, anchor = statistics.median(pg), statistics.median(anchor)
            rows.append((f"8. proxy req/s on PostgreSQL vs on sled, c={connections} "
                         f"(medians of {args.runs * 2} interleaved runs)",
                         f"{pg:,.0f}", f"{anchor:,.0f}", f"{pg / anchor:.2f}×",
                         "sled, same run (target ≥ 0.97)"))

        # A recreate through the first replica, a new component each time (the others
        # compile it into their own caches): from the first replica serving it to each
        # other replica serving it.
        delays = []
        for n in range(args.recreates):
            version = str(n + 2)
            recreate(replicas[0], on_pg, archive(work, PLAIN_HELLO, tag=1000 + n))
            urls = [r.proxy_url(on_pg) for r in replicas]
            deadline = time.monotonic() + 120
            while serving_version(urls[0]) != version:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"version {version} never served")
                time.sleep(0.001)
            served_first = time.monotonic()
            pending = set(range(1, len(urls)))
            while pending and time.monotonic() < deadline:
                for i in list(pending):
                    if serving_version(urls[i]) == version:
                        delays.append(time.monotonic() - served_first)
                        pending.discard(i)
            if pending:
                raise RuntimeError(f"version {version} never reached replicas {pending}")
        delays.sort()
        p50, p99 = delays[len(delays) // 2], delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        rows.append((f"8. recreate through one of 3 replicas → served by the others: p50 / p99 "
                     f"({len(delays)} samples, new component each)",
                     f"{ms(p50)} / {ms(p99)}", "1 s", f"{1 / p99:.2f}× (p99)",
                     "target (≥ 1: met)"))

        shared = archive(work, SDK_HELLO)
        pg_rate = creates_per_second(replicas[0], shared, args.rate_creates)
        sled_rate = creates_per_second(sled, shared, args.rate_creates)
        rows.append((f"8. creates/s, 16 clients, {args.rate_creates:,} creates",
                     f"{pg_rate:,.0f}", f"{sled_rate:,.0f}", f"{pg_rate / sled_rate:.2f}×",
                     "sled, same run"))
        stored, p50, p99 = list_latency(replicas[1], replicas[2], shared,
                                        args.rate_creates + 1, args.stored)
        rows.append((f"8. list page_size=100 at {stored:,} lambdas on "
                     "PostgreSQL: p50 / p99", f"{ms(p50)} / {ms(p99)}", "5 ms (p50)",
                     f"{0.005 / p50:.2f}×", "target (≥ 1: met)"))
    finally:
        for service in services:
            service.stop()
        database.stop()


def machine():
    with open("/proc/cpuinfo") as f:
        cpu = re.search(r"model name\s*:\s*(.+)", f.read())
    return (f"{os.cpu_count()} cores (nproc), {cpu.group(1) if cpu else 'unknown CPU'}, "
            f"{platform.platform()}")


def report(rows, args):
    lines = [
        f"## Suite results ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {machine()}. Load generator and servers share the cores; nothing pinned. "
        f"Medians of {args.runs} runs of {args.seconds} s.",
        f"Command: `python3 benches/suite.py --scenarios {args.scenarios} --runs {args.runs} "
        f"--seconds {args.seconds}"
        + (" --callgrind" if args.callgrind else "")
        + "".join(f" --env {pair}" for pair in args.env) + "`",
        "",
        "| measure | ours | anchor / target | ratio | anchor |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in rows],
        "",
        "Commands run:",
        "",
        *[f"- `{c}`" for c in dict.fromkeys(COMMANDS)],
    ]
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    with open(path) as f:
        doc = f.read()
    begin, end = "<!-- suite:begin -->", "<!-- suite:end -->"
    # Rows of scenarios this run did not measure are kept from the previous run.
    if begin in doc:
        ran = {str(n) for n in args.scenario_set}
        kept = [line for line in doc[doc.index(begin):doc.index(end)].splitlines()
                if re.match(r"\| (\d)\. ", line) and line[2] not in ran]
        if kept:
            table_end = lines.index("", 7)
            lines[table_end:table_end] = kept
            lines[7:table_end + len(kept)] = sorted(lines[7:table_end + len(kept)],
                                                    key=lambda line: line[2])
            lines.insert(4, f"Rows of scenarios {', '.join(sorted({l[2] for l in kept}))} are "
                            "from earlier runs (see this file's history).")
    text = "\n".join(lines)
    print("\n" + text)
    block = f"{begin}\n{text}\n{end}"
    if begin in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="1,2,3,4,6,7,8")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--stored", type=int, default=10_000)
    parser.add_argument("--recreates", type=int, default=30)
    parser.add_argument("--rate-creates", type=int, default=1000)
    parser.add_argument("--callgrind", action="store_true",
                        help="scenario 7 also counts instructions per request under valgrind")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="service setting for this run, e.g. "
                             "LUNA_LAMBDA_ENGINE_MEMORY_KEEP_RESIDENT_KB=1024")
    args = parser.parse_args()
    SERVICE_ENV.update(pair.split("=", 1) for pair in args.env)
    scenarios = {int(s) for s in args.scenarios.split(",")}
    args.scenario_set = scenarios | ({5} if 1 in scenarios else set())
    install_tools(scenarios)
    build()
    work = tempfile.mkdtemp(prefix="luna-suite-")
    rows = []
    try:
        if 1 in scenarios or 5 in scenarios:
            scenario_throughput(work, args, rows)
        if 2 in scenarios:
            scenario_pod_proxy(work, args, rows)
        if 3 in scenarios:
            scenario_upload(work, args, rows)
        if 4 in scenarios:
            scenario_scale(work, args, rows)
        if 6 in scenarios:
            scenario_python_lambda(work, args, rows)
        if 7 in scenarios:
            scenario_toolchains(work, args, rows)
        if 8 in scenarios:
            scenario_replicas(work, args, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows, args)


if __name__ == "__main__":
    main()
