"""A launched instance met on the gateway's loop (`PoolManager.start_instance`): the transport that will serve it
takes over the listener that was up before its container started, so its runtime connects once and is
configured (secrets, worker connections) in that round trip; while it has not connected, its container is looked
at between waits, so one that exited fails the start at once, with its logs."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fnctl.engine import instances
from fnctl.engine.instances import StartFailed
from fnctl.gateway.poolhost import Started, Target, Unavailable
from fnctl.invocation.aiotransport import AsyncCallHandler, AsyncTransport
from fnctl.invocation.protocol import ConnectionLost, RuntimeStartFailed
from fnctl.invocation.rendezvous import container_peer
from fnctl.invocation.transport import TransportTimeout

EXIT_CHECK = 0.5  # seconds between looks at a starting container while its runtime has not connected

InThread = Callable[[Callable[[], None]], Awaitable[Any]]  # runs a blocking look off the loop


async def meet_launched(
    target: Target,
    launched: instances.Launched,
    ready: asyncio.Future[Started],
    on_call: AsyncCallHandler | None,
    in_thread: InThread,
) -> None:
    """Wait for a launched instance's runtime on this loop; hand its transport to `ready`."""
    function = target.function
    transport = AsyncTransport(
        str(launched.socket_dir),
        peer=container_peer(launched.container_id),
        on_call=on_call,
        max_request=function.limits.payload,
    )
    deadline = time.monotonic() + instances.START_TIMEOUT
    connecting = asyncio.ensure_future(
        transport.connect(instances.START_TIMEOUT, secrets=target.secrets, listener=launched.listener)
    )
    check = functools.partial(instances.check_starting, function, launched.container_id, deadline)
    try:
        while not (await asyncio.wait([connecting], timeout=EXIT_CHECK))[0]:
            await in_thread(check)
        connecting.result()
    except RuntimeStartFailed as exc:
        raise StartFailed(exc.message, detail=exc.detail) from None
    except (TransportTimeout, ConnectionLost) as exc:
        await in_thread(check)  # StartFailed, saying why, when the container is gone
        raise StartFailed(f"the instance's runtime did not become ready: {exc.message}") from None
    finally:
        connecting.cancel()  # a no-op once connected; else the transport closes its listener
    if ready.done():  # the start was given up meanwhile (the gateway is closing)
        await transport.close()
        raise Unavailable("the gateway is shutting down")
    ready.set_result((launched.container_id, str(launched.socket_dir), transport))
