"""A DynamoDB stand-in on 127.0.0.1 for the Ray benchmark: `bench.sink`'s null sink, answering each request
after `delay` seconds (a round trip), serving until it is stopped and writing its per-second item counts
to `out` twice a second. `python -m bench.ray_sink '{"port": P, "delay": 0.02, "table": T, "out": FILE}'`."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench.sink import Sink


class _Later:
    """A transport whose writes leave `delay` seconds later."""

    def __init__(self, transport: Any, delay: float) -> None:
        self.transport, self.delay = transport, delay

    def write(self, data: bytes) -> None:
        asyncio.get_running_loop().call_later(self.delay, self.transport.write, data)


class LatencySink(Sink):
    delay = 0.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(_Later(transport, self.delay) if self.delay else transport)


def main(args: dict[str, Any]) -> None:
    LatencySink.delay = float(args["delay"])
    Sink.table = args["table"]
    out = Path(args["out"])

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(LatencySink, "127.0.0.1", args["port"])
        async with server:
            while True:
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(sorted(Sink.counts.items())))
                tmp.replace(out)
                await asyncio.sleep(0.5)

    asyncio.run(serve())


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
