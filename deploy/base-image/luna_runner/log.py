"""Lambda logging: one line per record on stdout, tagged with the request id being served."""

import contextvars
import logging
import sys

#: The Luna-Request-Id of the request the current thread or task is serving.
request_id = contextvars.ContextVar("luna_request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record):
        record.request_id = request_id.get()
        return True


def _make_logger():
    log = logging.getLogger("lambda")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(message)s")
    )
    handler.addFilter(_RequestIdFilter())
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


#: The logger lambdas write to; its lines end up in the lambda's logs.
logger = _make_logger()
