"""Compatibility shim: LUNA lambdas written against ``luna_lambda_tools`` import these names
unchanged; they are the runner's own."""

from luna_runner import (  # noqa: F401
    BaseLambdaTask,
    HandlersLambdaRequest,
    Response,
    StandaloneLambdaRequest,
    UserException,
    logger,
)
