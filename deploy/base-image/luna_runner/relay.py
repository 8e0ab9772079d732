"""A pod's relay: serves the unix socket the service connects to and relays each connection
to the lambda's own server on a TCP port inside the pod's network namespace.

A Docker pod has a network namespace of its own with nothing in it but a loopback; the relay
holds that namespace (the lambda's container joins it) and is the only way in. Standard
library only. Settings from the environment:

  LUNA_LAMBDA_SOCKET    the unix socket to listen on
  LUNA_LAMBDA_RELAY_TO  host:port of the lambda's server (default 127.0.0.1:8080)
"""

import asyncio
import os
import signal
import socket

CHUNK = 64 * 1024


async def pump(reader, writer):
    """Copies one direction until its end, then passes the end on (a half close)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


async def relay(client_reader, client_writer, host, port):
    try:
        pod_reader, pod_writer = await asyncio.open_connection(host, port)
    except OSError:
        # Not listening yet (starting) or gone: the service sees a closed connection.
        client_writer.close()
        return
    pod_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.gather(pump(client_reader, pod_writer), pump(pod_reader, client_writer))
    finally:
        pod_writer.close()
        client_writer.close()


async def main():
    path = os.environ["LUNA_LAMBDA_SOCKET"]
    host, _, port = os.environ.get("LUNA_LAMBDA_RELAY_TO", "127.0.0.1:8080").rpartition(":")
    try:
        os.unlink(path)  # left by this relay's previous run
    except FileNotFoundError:
        pass
    server = await asyncio.start_unix_server(
        lambda r, w: relay(r, w, host, int(port)), path=path, backlog=1024
    )
    os.chmod(path, 0o666)  # the directory keeps everyone but the service away
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
