#!/usr/bin/env python3
"""Figures of the WASM platform, measured on this machine in one run:

  * requests/s and latency through the proxy for `examples/hello` and `examples/kv-counter`
    (an atomic increment persisted per request, and a read-only `?peek`) at concurrency
    1, 16 and 64 (wrk, release build, server and load generator sharing the cores);
  * per-request instantiation time from the pool, p50 and p99, computed from the
    service's own `lambda_instantiate_seconds` histogram in /metrics;
  * the server's RSS before and after 10,000 faulting requests (trap, stack overflow,
    memory exhaustion, round robin, 8 clients) against the test fixture guest.

Usage (from the repository root):  python3 benches/wasm_platform.py
Needs: a Rust toolchain with the wasm32-wasip2 target, curl, wrk (apt-get install wrk).
Only 127.0.0.1 is contacted. Prints a Markdown table.
"""

import concurrent.futures
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile

import foundation as common
from suite import histogram_quantiles, machine

ROOT = common.ROOT
FAULTS = int(os.environ.get("FAULTS", "10000"))
FAULT_WARMUP = 600
FAULT_CLIENTS = 8


def build():
    common.run("cargo", "build", "--release", "--bin", "luna-lambda")
    common.run("cargo", "build", "--release", "--target", "wasm32-wasip2",
               "-p", "hello", "-p", "kv-counter")
    common.run("cargo", "build", "--release", "--target", "wasm32-wasip2",
               "--manifest-path", "tests/guests/Cargo.toml",
               env=dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target/guests")))


def pack(workdir, wasm_path, name):
    path = os.path.join(workdir, f"{name}.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(os.path.join(ROOT, wasm_path), "lambda.wasm")
    return path


def deploy(base, archive, name, deploy_parameters=None):
    """Creates a lambda (with deploy parameters when given) and waits until it runs."""
    form = ["-F", f"archive=@{archive};type=application/zip",
            "-F", 'credentials={"token":"bench"};type=application/json',
            "-F", f'parameters={{"lambda_name":"{name}"}};type=application/json']
    if deploy_parameters:
        form += ["-F", f"deploy_parameters={common.json.dumps(deploy_parameters)};"
                       "type=application/json"]
    out = common.subprocess.run(
        ["curl", "-s", "-H", f"Luna-Account-Id: {common.ACCOUNT}", *form, f"{base}/1/lambdas"],
        check=True, capture_output=True, text=True).stdout
    lambda_id = common.json.loads(out)["lambda_id"]
    common.wait_running(base, lambda_id)
    return lambda_id


def fault_run(base, lambda_id, count):
    """`count` faulting requests, round robin over three faults, FAULT_CLIENTS at a time."""
    paths = ["/trap", "/recurse", "/memhog"]

    def one(n):
        url = f"{base}/1/lambdas/{lambda_id}/proxy{paths[n % 3]}"
        try:
            urllib.request.urlopen(url).read()
            return 200
        except urllib.error.HTTPError as e:
            e.read()
            return e.code

    with concurrent.futures.ThreadPoolExecutor(FAULT_CLIENTS) as pool:
        statuses = list(pool.map(one, range(count)))
    unexpected = [s for s in statuses if s != 500]
    if unexpected:
        raise RuntimeError(f"{len(unexpected)} faulting requests did not answer 500")


def main():
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    build()
    work = tempfile.mkdtemp(prefix="luna-bench-")
    proc, base = common.start(os.path.join(work, "data"))
    rows = []
    try:
        hello = deploy(base, pack(work, "target/wasm32-wasip2/release/hello.wasm", "hello"),
                       "hello")
        counter = deploy(base, pack(work, "target/wasm32-wasip2/release/kv_counter.wasm",
                                    "kv-counter"), "kv-counter")
        targets = [
            ("hello", f"{base}/1/lambdas/{hello}/proxy/main"),
            ("kv-counter increment", f"{base}/1/lambdas/{counter}/proxy/bench"),
            ("kv-counter peek", f"{base}/1/lambdas/{counter}/proxy/bench?peek"),
        ]
        for label, url in targets:
            for conns, threads in ((1, 1), (16, 2), (64, 2)):
                rps, p50, p99, errors = common.wrk(url, conns, threads)
                rows.append((f"{label}, concurrency {conns}: req/s (p50 / p99)",
                             f"{rps:,.0f} ({p50} / {p99})"
                             + (f", {errors} non-2xx" if errors else "")))
        for label, lambda_id in (("hello", hello), ("kv-counter", counter)):
            with urllib.request.urlopen(f"{base}/metrics") as r:
                metrics = r.read().decode()
            (p50, p99), total = histogram_quantiles(
                metrics, "lambda_instantiate_seconds", lambda_id, (0.5, 0.99))
            rows.append((f"instantiation from the pool, {label} ({total:,} requests): p50 / p99",
                         f"{p50 * 1e6:.1f} µs / {p99 * 1e6:.1f} µs"))

        fixture = deploy(
            base, pack(work, "target/guests/wasm32-wasip2/release/fixture.wasm", "fixture"),
            "fault-soak", {"sandbox": {"memory_limit_mb": 16, "max_concurrent_requests": 64}})
        fault_run(base, fixture, FAULT_WARMUP)
        before = common.rss_mib(proc.pid)
        started = common.time.monotonic()
        fault_run(base, fixture, FAULTS)
        elapsed = common.time.monotonic() - started
        after = common.rss_mib(proc.pid)
        with urllib.request.urlopen(f"{base}/1/lambdas/{fixture}/proxy/hello") as r:
            assert r.status == 200
        rows.append((f"RSS before / after {FAULTS:,} faulting requests ({elapsed:.1f} s)",
                     f"{before:.1f} MiB / {after:.1f} MiB ({after - before:+.1f} MiB)"))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nMachine: {machine()}; server and wrk share the cores; "
          f"wrk {common.WRK_SECONDS} s per run.\n")
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
