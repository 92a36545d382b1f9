"""Run one client scenario against a :class:`FlashHeadServer` on a free loopback port (the server
tests' shared harness)."""

from __future__ import annotations

import asyncio

from vividhead.inference.server import FlashHeadServer


def run_scenario(server: FlashHeadServer, scenario, timeout: float = 300):
    """``await scenario(port)`` while ``server`` listens on 127.0.0.1; the server is closed after.

    Raises:
        asyncio.TimeoutError: the scenario took longer than ``timeout`` seconds.
    """

    async def main():
        async with server.listen("127.0.0.1", 0) as srv:
            return await scenario(srv.sockets[0].getsockname()[1])

    try:
        return asyncio.run(asyncio.wait_for(main(), timeout))
    finally:
        server.close()
