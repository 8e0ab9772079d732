"""Entry point: ``python3 -m luna_runner`` serves the lambda in the working directory."""

import sys

from .server import serve

if __name__ == "__main__":
    sys.exit(serve())
