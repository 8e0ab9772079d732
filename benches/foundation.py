#!/usr/bin/env python3
"""Baseline figures of the foundation, measured on this machine in one run:

  * upload -> first 200 for the hello component: cold (Cranelift compile) and cache hit
    (the same archive uploaded again as a new lambda);
  * requests/s and latency of the hello route through the proxy at concurrency 1 and 32
    (wrk, release build, server and load generator sharing the machine's cores);
  * the server's RSS with 100 idle WASM lambdas loaded (one shared component, then 100
    distinct components).

Usage (from the repository root):  python3 benches/foundation.py
Needs: a Rust toolchain with the wasm32-wasip2 target, curl, wrk (apt-get install wrk).
Only 127.0.0.1 is contacted. Prints a Markdown table.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCOUNT = "8950722f-3fd4-4223-b48f-03f95f0e8dfb"
WRK_SECONDS = int(os.environ.get("WRK_SECONDS", "10"))
IDLE_LAMBDAS = int(os.environ.get("IDLE_LAMBDAS", "100"))


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def build():
    run("cargo", "build", "--release", "--bin", "luna-lambda")
    run("cargo", "build", "--release", "--target", "wasm32-wasip2", "-p", "hello")


def pack(workdir, tag=None):
    """The hello archive; with a tag, a distinct component (a custom section added)."""
    with open(os.path.join(ROOT, "target/wasm32-wasip2/release/hello.wasm"), "rb") as f:
        wasm = f.read()
    name = "hello.zip"
    if tag is not None:
        payload = b"\x05bench" + tag.to_bytes(4, "little")
        wasm += bytes([0, len(payload)]) + payload
        name = f"hello-{tag}.zip"
    path = os.path.join(workdir, name)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("lambda.wasm", wasm)
    return path


def start(data_dir):
    env = dict(os.environ, LUNA_LAMBDA_LOG_LEVEL="warn")
    proc = subprocess.Popen(
        [os.path.join(ROOT, "target/release/luna-lambda"), "serve", "--listen", "127.0.0.1:0",
         "--data-dir", data_dir],
        stdout=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline()
    base = re.search(r"listening on (\S+)", line).group(1)
    return proc, base


def create(base, archive, name, method="POST", lambda_id=None):
    url = f"{base}/1/lambdas" + (f"/{lambda_id}" if lambda_id else "")
    out = subprocess.run(
        ["curl", "-s", "-X", method, "-H", f"Luna-Account-Id: {ACCOUNT}",
         "-F", f"archive=@{archive};type=application/zip",
         "-F", 'credentials={"token":"t"};type=application/json',
         "-F", f'parameters={{"lambda_name":"{name}"}};type=application/json', url],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def first_200(base, lambda_id, version, started, timeout=120):
    url = f"{base}/1/lambdas/{lambda_id}/proxy/main"
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(url) as r:
                if r.status == 200 and r.headers.get("Lambda-Version") == str(version):
                    return time.monotonic() - started
        except Exception:
            pass
        time.sleep(0.002)
    raise RuntimeError("lambda never answered")


def wrk(url, connections, threads):
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{WRK_SECONDS}s", "--latency", url],
        check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {m.group(1): m.group(2) for m in re.finditer(r"\s+(50|99)%\s+(\S+)", out)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, lat.get("50"), lat.get("99"), int(errors.group(1)) if errors else 0


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return kb / 1024


def wait_running(base, lambda_id, timeout=300):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with urllib.request.urlopen(f"{base}/1/lambdas/{lambda_id}/status") as r:
            if json.load(r)["status"] == "running":
                return
        time.sleep(0.01)
    raise RuntimeError(f"{lambda_id} never ran")


def main():
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    build()
    work = tempfile.mkdtemp(prefix="luna-bench-")
    archive = pack(work)
    proc, base = start(os.path.join(work, "data"))
    rows = []
    try:
        t = time.monotonic()
        lid = create(base, archive, "cold")["lambda_id"]
        rows.append(("upload -> first 200, cold (compile)", f"{first_200(base, lid, 1, t) * 1000:.0f} ms"))
        t = time.monotonic()
        hit = create(base, archive, "warm")["lambda_id"]
        rows.append(("upload -> first 200, cache hit (same archive, new lambda)",
                     f"{first_200(base, hit, 1, t) * 1000:.0f} ms"))
        t = time.monotonic()
        create(base, archive, "cold", method="PUT", lambda_id=lid)
        rows.append(("recreate -> first 200 of version 2, cache hit",
                     f"{first_200(base, lid, 2, t) * 1000:.0f} ms"))
        url = f"{base}/1/lambdas/{lid}/proxy/main"
        for conns, threads in ((1, 1), (32, 2)):
            rps, p50, p99, errors = wrk(url, conns, threads)
            rows.append((f"hello via proxy, concurrency {conns}: req/s", f"{rps:,.0f}"))
            rows.append((f"hello via proxy, concurrency {conns}: p50 / p99", f"{p50} / {p99}"))
            if errors:
                rows.append((f"hello via proxy, concurrency {conns}: non-2xx", str(errors)))
        loaded = 2
        for kind, archive_of in (("shared component", lambda i: archive),
                                 ("distinct components", lambda i: pack(work, i))):
            before = rss_mib(proc.pid)
            ids = [create(base, archive_of(i), f"{kind.split()[0]}{i}")["lambda_id"]
                   for i in range(IDLE_LAMBDAS)]
            for i in ids:
                wait_running(base, i)
            after = rss_mib(proc.pid)
            loaded += IDLE_LAMBDAS
            rows.append((f"RSS with {loaded} idle lambdas loaded", f"{after:.1f} MiB"))
            rows.append((f"RSS added by {IDLE_LAMBDAS} idle lambdas ({kind})",
                         f"{after - before:.1f} MiB ({(after - before) * 1024 / IDLE_LAMBDAS:.0f} KiB each)"))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        m = re.search(r"model name\s*:\s*(.+)", f.read())
        cpu = m.group(1) if m else cpu
    print(f"\nMachine: {os.cpu_count()} cores, {cpu}, {platform.platform()}; "
          f"server and wrk share the cores; wrk {WRK_SECONDS} s per run.\n")
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
