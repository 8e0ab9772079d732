"""The HTTP side of the runner: routes, worker processes, the event loop for async lambdas.

Routes: ``/healthcheck``; ``/docs/spec`` (the archive's openapi document or a default);
``/metrics``; ``/static/...`` (the archive's static folder); tasks lambdas ``POST /split`` and
``POST /execute``; every other path of a standalone or handlers lambda goes to ``main``
(``/main`` is LUNA's documented one; ``request.path`` tells them apart).
"""

import asyncio
import importlib
import inspect
import json
import mimetypes
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import log
from .request import LambdaRequest, UserException, encode

OPENAPI_FILES = ("openapi.yml", "openapi.yaml", "openapi.json")
DEFAULT_SPEC = """openapi: 3.0.0
info:
  title: {name}
  version: "{version}"
  description: A LUNA lambda with no openapi document of its own.
paths:
  /main:
    post:
      summary: Calls the lambda's main.
      responses:
        "200":
          description: What main returned.
"""


class Settings:
    """The lambda's settings, read once from the environment."""

    def __init__(self, env):
        self.port = int(env.get("PORT", "8080"))
        self.host = env.get("LUNA_LAMBDA_LISTEN_HOST", "0.0.0.0")
        # A unix socket to listen on instead of host:port (a pod without a network).
        self.socket = env.get("LUNA_LAMBDA_SOCKET") or None
        self.workers = max(1, min(32, int(env.get("WORKERS", "1"))))
        self.lambda_type = env.get("LUNA_LAMBDA_TYPE", "standalone")
        self.lambda_id = env.get("LAMBDA_ID", "")
        self.account_id = env.get("LUNA_ACCOUNT_ID", "")
        self.version = env.get("LAMBDA_VERSION", "1")
        self.directory = Path(env.get("LUNA_LAMBDA_DIR", os.getcwd()))
        self.config = json.loads(env.get("LUNA_LAMBDA_CONFIG") or "{}")
        self.credentials = json.loads(env.get("LUNA_LAMBDA_CREDENTIALS") or "{}")


class Lambda:
    """The loaded ``lambda_main`` module and how to call it."""

    def __init__(self, settings):
        self.settings = settings
        sys.path.insert(0, str(settings.directory))
        self.module = importlib.import_module("lambda_main")
        self.main = None
        self.task = None
        if settings.lambda_type == "tasks":
            self.task = find_task_class(self.module)()
        else:
            self.main = getattr(self.module, "main", None)
            if not callable(self.main):
                raise RuntimeError("lambda_main.py defines no callable 'main'")
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="lambda-loop", daemon=True).start()
        self.spec = load_spec(settings)
        self.requests = {}
        self.requests_lock = threading.Lock()

    def call(self, function, *args):
        """Runs a sync or async callable; coroutines run on the worker's event loop."""
        result = function(*args)
        if inspect.isawaitable(result):
            return asyncio.run_coroutine_threadsafe(_await(result), self.loop).result()
        return result

    def count(self, route, status):
        key = (route, status)
        with self.requests_lock:
            self.requests[key] = self.requests.get(key, 0) + 1


async def _await(awaitable):
    return await awaitable


def find_task_class(module):
    for value in vars(module).values():
        if (
            inspect.isclass(value)
            and value.__module__ == module.__name__
            and callable(getattr(value, "splitTasksContent", None))
            and callable(getattr(value, "executeSubtask", None))
        ):
            return value
    raise RuntimeError(
        "lambda_main.py defines no class with splitTasksContent and executeSubtask"
    )


def load_spec(settings):
    for name in OPENAPI_FILES:
        path = settings.directory / name
        if path.is_file():
            content_type = "application/json" if name.endswith(".json") else "application/x-yaml"
            return path.read_bytes(), content_type
    text = DEFAULT_SPEC.format(name=f"lambda {settings.lambda_id}".strip(), version=settings.version)
    return text.encode(), "application/x-yaml"


def error_body(status, code, desc, detail):
    return status, {"Content-Type": "application/json"}, json.dumps(
        {"error_code": code, "desc": desc, "detail": detail}
    ).encode()


def make_handler(the_lambda):
    settings = the_lambda.settings
    static_root = (settings.directory / "static").resolve()

    class Handler(BaseHTTPRequestHandler):
        # Keep-alive: the service's proxy pools its connections. Without TCP_NODELAY the
        # body (a second write after the headers) waits for a delayed ACK: 40 ms a request.
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = settings.socket is None  # TCP only
        server_version = "luna-runner"

        def log_message(self, fmt, *args):  # access lines are the service's job
            pass

        def read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def handle_any(self):
            started = time.monotonic()
            path, _, query = self.path.partition("?")
            request_id = self.headers.get("Luna-Request-Id") or f"{int(time.time())},{uuid.uuid4()}"
            token = log.request_id.set(request_id)
            try:
                body = self.read_body()
                status, headers, payload = self.route(path, query, body, request_id, started)
            except UserException as e:
                status, headers, payload = error_body(e.status, e.error_code, "Lambda execution error", e.detail)
            except Exception as e:  # the lambda's failure costs this request only
                log.logger.error("unhandled exception in the lambda:\n%s", traceback.format_exc())
                status, headers, payload = error_body(
                    500, 42013, "Lambda execution error", f"{type(e).__name__}: {e}"
                )
            finally:
                log.request_id.reset(token)
            the_lambda.count(f"{self.command}:{path}", status)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Lambda-Version", settings.version)
            self.send_header("Luna-Request-Id", request_id)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def route(self, path, query, body, request_id, started):
            if path == "/healthcheck":
                elapsed = round(time.monotonic() - started, 6)
                return 200, {"Content-Type": "application/json"}, json.dumps({"execution_time": elapsed}).encode()
            if path == "/docs/spec":
                spec, content_type = the_lambda.spec
                return 200, {"Content-Type": content_type}, spec
            if path == "/metrics":
                return 200, {"Content-Type": "text/plain; version=0.0.4"}, self.metrics().encode()
            if path.startswith("/static/") and self.command in ("GET", "HEAD"):
                return self.static(path[len("/static/"):])
            if the_lambda.task is not None:
                return self.task(path, body)
            request = LambdaRequest(self.command, path, query, self.headers, body, request_id, settings)
            return encode(the_lambda.call(the_lambda.main, request))

        def task(self, path, body):
            methods = {"/split": "splitTasksContent", "/execute": "executeSubtask"}
            if path not in methods:
                return error_body(404, 12001, "Resource not found", f"tasks lambdas serve POST /split and POST /execute, not {path}")
            if self.command != "POST":
                return error_body(405, 12005, "Method not allowed", f"{self.command} {path}")
            try:
                content = json.loads(body)
            except ValueError:
                return error_body(400, 12002, "Bad/incomplete input data", "request does not contain json")
            result = the_lambda.call(getattr(the_lambda.task, methods[path]), content)
            return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()

        def static(self, relative):
            target = (static_root / relative).resolve()
            if static_root not in target.parents or not target.is_file():
                return error_body(404, 12001, "Resource not found", f"no static file '{relative}'")
            content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            return 200, {"Content-Type": content_type}, target.read_bytes()

        def metrics(self):
            lines = ["# HELP request_count_total Counter of requests", "# TYPE request_count_total counter"]
            with the_lambda.requests_lock:
                for (route, status), count in sorted(the_lambda.requests.items()):
                    lines.append(f'request_count_total{{path="{route}",status_code="{status}"}} {count}')
            return "\n".join(lines) + "\n"

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    return Handler


def listen(settings):
    """The listening socket: TCP on host:port, or the unix socket the service connects to."""
    if settings.socket is None:
        return socket.create_server((settings.host, settings.port), reuse_port=False, backlog=1024)
    try:
        os.unlink(settings.socket)  # left by this pod's previous run (a restart)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(settings.socket)
    # The service may run as another user than the pod; the directory holding the
    # socket is what keeps everyone else away from it.
    os.chmod(settings.socket, 0o666)
    listener.listen(1024)
    return listener


def serve(env=None):
    settings = Settings(os.environ if env is None else env)
    listener = listen(settings)
    children = []
    # Workers share the listening socket; the first process is one of them.
    for _ in range(settings.workers - 1):
        pid = os.fork()
        if pid == 0:
            children = None
            break
        children.append(pid)
    the_lambda = Lambda(settings)
    server = ThreadingHTTPServer((settings.host, settings.port), make_handler(the_lambda), bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    server.daemon_threads = True

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()
        for pid in children or []:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if children is not None:
        log.logger.info(
            "lambda %s version %s (%s) listening on %s with %d worker(s)",
            settings.lambda_id or "-", settings.version, settings.lambda_type,
            settings.socket or f"{settings.host}:{settings.port}", settings.workers,
        )
    server.serve_forever(poll_interval=0.5)
    for pid in children or []:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return 0
