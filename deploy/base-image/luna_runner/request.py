"""What a lambda's ``main`` receives and may return."""

import json
import urllib.parse


class UserException(Exception):
    """Raised by a lambda to answer an error of its own: ``status`` (default 400) with
    ``{"error_code", "desc", "detail"}`` where detail is the message."""

    def __init__(self, detail, status=400, error_code=42013):
        super().__init__(detail)
        self.detail = str(detail)
        self.status = int(status)
        self.error_code = int(error_code)


class Response:
    """An explicit response: ``body`` (dict/list → JSON, str → text, bytes → as is)."""

    def __init__(self, body=b"", status=200, headers=None, content_type=None):
        self.body = body
        self.status = int(status)
        self.headers = dict(headers or {})
        self.content_type = content_type


class LambdaRequest:
    """One HTTP request to the lambda.

    ``body`` (bytes), ``getBody()``, ``json`` (parsed body, ``None`` when it is not JSON),
    ``args`` (query parameters: a value, or a list when repeated), ``headers`` (case-insensitive),
    ``requestId`` (the Luna-Request-Id), ``method``, ``path``, ``config`` (the lambda's
    ``parameters.config``), ``credentials``, ``lambdaId``, ``accountId``, ``version``.
    """

    def __init__(self, method, path, query, headers, body, request_id, settings):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.requestId = request_id
        self.config = settings.config
        self.credentials = settings.credentials
        self.lambdaId = settings.lambda_id
        self.accountId = headers.get("Luna-Account-Id") or settings.account_id
        self.version = settings.version
        args = {}
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if key in args:
                previous = args[key]
                args[key] = previous + [value] if isinstance(previous, list) else [previous, value]
            else:
                args[key] = value
        self.args = args
        self._json = _UNSET

    def getBody(self):
        """The raw body (LUNA's accessor)."""
        return self.body

    @property
    def json(self):
        if self._json is _UNSET:
            try:
                self._json = json.loads(self.body) if self.body else None
            except ValueError:
                self._json = None
        return self._json

    @property
    def data(self):
        """Handlers lambdas: the event-generation input (the JSON body)."""
        return self.json


_UNSET = object()

#: LUNA's names for the request of each lambda type.
StandaloneLambdaRequest = LambdaRequest
HandlersLambdaRequest = LambdaRequest


def encode(result):
    """Turns what ``main`` returned into (status, headers, body bytes)."""
    status, headers = 200, {}
    if isinstance(result, tuple):
        if len(result) == 3:
            result, status, headers = result
        elif len(result) == 2:
            result, status = result
        else:
            raise TypeError("main may return (body, status) or (body, status, headers)")
        headers = dict(headers or {})
    content_type = None
    if isinstance(result, Response):
        status, headers, content_type = result.status, result.headers, result.content_type
        result = result.body
    if result is None:
        return (204 if status == 200 else status), headers, b""
    if isinstance(result, (bytes, bytearray, memoryview)):
        body, default_type = bytes(result), "application/octet-stream"
    elif isinstance(result, str):
        body, default_type = result.encode(), "text/plain; charset=utf-8"
    else:
        body, default_type = json.dumps(result).encode(), "application/json"
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = content_type or default_type
    return int(status), headers, body
