#!/usr/bin/env python3
"""Runs the README the way a newcomer does and fails where it says something untrue.

1. The first command of "Two commands" runs exactly as written, from a fresh temporary
   working directory inside the checkout (so `cargo` finds the workspace and `./data`
   is relative to a directory no test prepared), with defaults: the only difference is
   LUNA_LAMBDA_LISTEN=127.0.0.1:0, a free port instead of 5210 (no flag is added). It
   must announce its address and answer GET /version, with its data in ./data.
2. The "Worked example" block runs line by line in one bash from the repository root,
   as written, but for its address (127.0.0.1:5210 becomes the one announced). A line
   `#> text` under a command is what the command prints: every such line must match a
   line of its output, in order (`...` stands for anything). A command that fails, or
   whose output differs, fails the run with both shown.
3. Ctrl-C (SIGINT to the command's process group, as a terminal sends it) must stop the
   service cleanly: exit status 0 and its "stopped" line.

The commands are read from README.md itself, so the test follows the README.
Usage: tests/readme/run.py   (SERVE_DEADLINE_SECS bounds the first build, default 2700)
"""

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")
DOCUMENTED_ADDRESS = "127.0.0.1:5210"
STEP_DEADLINE_SECS = 1800
STOP_DEADLINE_SECS = 30


def fail(message):
    print(f"README test: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def sh_block(text, heading):
    """Lines of the first ```sh block after the level-2 heading `heading`."""
    start = text.find(f"\n## {heading}\n")
    if start < 0:
        fail(f"README.md has no '## {heading}' section")
    match = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    if not match:
        fail(f"'## {heading}' has no ```sh block")
    return match.group(1).splitlines()


def steps(lines):
    """(command, expected output lines) pairs: continuation lines joined, comments
    skipped, `#> ` lines attached to the command above them."""
    result, pending = [], ""
    for line in lines:
        if pending:
            pending += "\n" + line
        elif line.startswith("#>"):
            if not result:
                fail(f"expected output with no command above it: {line}")
            result[-1][1].append(line[2:].removeprefix(" "))
            continue
        elif not line.strip() or line.lstrip().startswith("#"):
            continue
        else:
            pending = line
        if not pending.endswith("\\"):
            result.append((pending, []))
            pending = ""
    return result


def line_pattern(expected):
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")))


def differs(expected, output):
    """None when every expected line matches an output line in order, else the first
    expected line that does not."""
    lines = iter(line.rstrip("\r") for line in output.splitlines())
    for want in expected:
        pattern = line_pattern(want)
        if not any(pattern.fullmatch(line) for line in lines):
            return want
    return None


def wait_for_address(service, log_path, deadline):
    """The address from the service's 'listening on' line (the first build may run)."""
    buffered = b""
    last_note = time.monotonic()
    while time.monotonic() < deadline:
        if service.poll() is not None:
            fail(f"the first command exited ({service.returncode}):\n{tail(log_path)}")
        ready, _, _ = select.select([service.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(service.stdout.fileno(), 65536)
            buffered += chunk
            match = re.search(rb"luna-lambda listening on http://([0-9.:]+)", buffered)
            if match:
                return match.group(1).decode()
        if time.monotonic() - last_note > 60:
            last_note = time.monotonic()
            print(f"   ... still starting: {tail(log_path, 1).strip()}", flush=True)
    fail(f"the service did not announce its address in time:\n{tail(log_path)}")


def tail(path, lines=30):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode(errors="replace")
    except OSError as e:
        return None, str(e)


class Shell:
    """One bash for the whole example, so its variables carry from line to line."""

    def __init__(self, cwd, scratch):
        self.scratch = scratch
        self.bash = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.count = 0

    def run(self, command, deadline):
        self.count += 1
        out = os.path.join(self.scratch, f"step-{self.count}.out")
        err = os.path.join(self.scratch, f"step-{self.count}.err")
        # A group runs in this shell: assignments stay.
        script = f'{{\n{command}\n}} >"{out}" 2>"{err}" </dev/null; echo "__step_status__ $?"\n'
        self.bash.stdin.write(script.encode())
        self.bash.stdin.flush()
        buffered = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.bash.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(self.bash.stdout.fileno(), 4096)
                if not chunk:
                    fail(f"the shell exited during: {command}")
                buffered += chunk
                match = re.search(rb"__step_status__ (\d+)\n", buffered)
                if match:
                    with open(out, errors="replace") as o, open(err, errors="replace") as e:
                        return int(match.group(1)), o.read(), e.read()
        fail(f"timed out: {command}")

    def close(self):
        self.bash.stdin.close()
        self.bash.wait(timeout=10)


def main():
    text = open(README).read()
    first = sh_block(text, "Two commands")[0]
    serve = re.sub(r"\s+#.*$", "", first).strip()
    example = steps(sh_block(text, "Worked example"))
    if not example:
        fail("the worked example has no commands")

    os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="readme-", dir=os.path.join(ROOT, "target"))
    log_path = os.path.join(workdir, "service.log")
    print(f"== README first command, in {workdir}: {serve}", flush=True)
    env = dict(os.environ, LUNA_LAMBDA_LISTEN="127.0.0.1:0")
    with open(log_path, "wb") as log:
        service = subprocess.Popen(
            ["bash", "-c", serve],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    zip_before = {f for f in os.listdir(ROOT) if f.endswith(".zip")}
    try:
        deadline = time.monotonic() + int(os.environ.get("SERVE_DEADLINE_SECS", "2700"))
        address = wait_for_address(service, log_path, deadline)
        status, body = None, ""
        answer_deadline = time.monotonic() + 10
        while time.monotonic() < answer_deadline and status != 200:
            status, body = get(f"http://{address}/version")
            time.sleep(0.1)
        if status != 200:
            fail(f"GET /version did not answer 200 ({status}: {body})")
        if not os.path.isdir(os.path.join(workdir, "data", "store")):
            fail("the service keeps its data somewhere else than ./data of where it started")
        print(f"   serving on {address}, GET /version: {body.strip()}", flush=True)

        scratch = os.path.join(workdir, "steps")
        os.makedirs(scratch)
        shell = Shell(ROOT, scratch)
        for command, expected in example:
            command_here = command.replace(DOCUMENTED_ADDRESS, address)
            print(f"== {command}", flush=True)
            code, out, err = shell.run(command_here, time.monotonic() + STEP_DEADLINE_SECS)
            if code != 0:
                fail(f"exit status {code}: {command}\n{out}{err}\nservice log:\n{tail(log_path)}")
            wrong = differs(expected, out)
            if wrong is not None:
                fail(
                    f"{command}\nthe README says it prints a line matching:\n  {wrong}\n"
                    f"it printed:\n{out}"
                )
        shell.close()
        print(f"== worked example: {len(example)} commands as the README says", flush=True)
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGINT)
        try:
            code = service.wait(timeout=STOP_DEADLINE_SECS)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            fail(f"Ctrl-C did not stop the service in {STOP_DEADLINE_SECS} s")
        # The archives the example packed into the checkout, failed run or not.
        for name in os.listdir(ROOT):
            if name.endswith(".zip") and name not in zip_before:
                os.remove(os.path.join(ROOT, name))
    if code != 0:
        fail(f"Ctrl-C: exit status {code}, not 0:\n{tail(log_path)}")
    if "stopped" not in tail(log_path, 5):
        fail(f"Ctrl-C: no 'stopped' line at the end of the log:\n{tail(log_path)}")
    print("== Ctrl-C: stopped cleanly (exit 0)")
    subprocess.run(["rm", "-rf", workdir], check=False)
    print("README test: passed")


if __name__ == "__main__":
    main()
