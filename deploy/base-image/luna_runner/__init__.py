"""The luna lambda runner: serves a LUNA Python lambda (``lambda_main.py``) over HTTP.

Standard library only. The service starts it as the container's command with the lambda's
settings in the environment:

  PORT                     port to listen on (default 8080)
  LUNA_LAMBDA_LISTEN_HOST  address to listen on (default 0.0.0.0)
  LUNA_LAMBDA_SOCKET       a unix socket to listen on instead (a pod without a network)
  WORKERS                  worker processes sharing the listening socket (default 1)
  LUNA_LAMBDA_TYPE         standalone | handlers | tasks (default standalone)
  LAMBDA_ID, LAMBDA_VERSION, LUNA_ACCOUNT_ID   identity, echoed in logs and headers
  LUNA_LAMBDA_CONFIG       the lambda's ``parameters.config`` as JSON
  LUNA_LAMBDA_CREDENTIALS  the lambda's credentials as JSON
  LUNA_LAMBDA_DIR          where lambda_main.py lives (default: the working directory)

Lambda authors import what they need from here (or from the ``luna_lambda_tools`` shim that
keeps LUNA lambdas working unchanged)::

    from luna_runner import StandaloneLambdaRequest, logger

    async def main(request: StandaloneLambdaRequest) -> dict:
        return {"request_length_in_bytes": len(request.body)}

``python3 -m luna_runner.relay`` is the other program here: the holder of a pod's network
namespace, relaying its unix socket to a lambda of its own Dockerfile listening on ``$PORT``.
"""

from .request import (
    HandlersLambdaRequest,
    LambdaRequest,
    Response,
    StandaloneLambdaRequest,
    UserException,
)
from .log import logger
from .tasks import BaseLambdaTask

__all__ = [
    "BaseLambdaTask",
    "HandlersLambdaRequest",
    "LambdaRequest",
    "Response",
    "StandaloneLambdaRequest",
    "UserException",
    "logger",
]
