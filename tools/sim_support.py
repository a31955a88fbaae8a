"""What the contact-centre simulators share (`vbgw audiohook-sim`, `vbgw nice-sim`): many calls
started at a rate, WAV files read as the gateway reads uploads, and each call's verification
read back from the gateway's REST API."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

from connectors.base import ConnectorError

T = TypeVar("T")


async def staggered(run_one: Callable[[int], Awaitable[T]], n: int, rate: float) -> list[T]:
    """`run_one(0)` ... `run_one(n - 1)`, started `rate` per second (all at once if rate <= 0),
    their results in that order."""
    async def one(i: int) -> T:
        await asyncio.sleep(i / rate if rate > 0 else 0)
        return await run_one(i)
    return list(await asyncio.gather(*(one(i) for i in range(n))))


def load_files(files: list[Path], load: Callable[[Path], T]) -> list[T]:
    """`load(f)` of each file; ValueError saying which file is missing or not audio."""
    out = []
    for f in files:
        if not f.is_file():
            raise ValueError(f"no such file: {f}")
        try:
            out.append(load(f))
        except ConnectorError as exc:
            raise ValueError(f"cannot read {f} as audio: {exc.message}") from None
    return out


async def verification_lines(uri: str, pat: str, tenant: str, profile: str, users: list[str], calls: list[str],
                             what: str) -> list[str]:
    """One line per call (its masterId in `calls`): its verification against `users`, from a
    session token for it and GET /verification/ondemand (the verdict never travels back over
    the contact centre's own protocol)."""
    import aiohttp

    from gateway.cli.client import ClientError, create_token, describe, http_base, ondemand
    base = http_base(uri)
    lines = []
    async with aiohttp.ClientSession() as http:
        for master_id in calls:
            try:
                tok = await create_token(http, base, pat, master_id, tenant, profile)
                lines.append(f"verification of {what} {master_id}: {describe(await ondemand(http, base, tok, users))}")
            except (ClientError, aiohttp.ClientError) as exc:
                lines.append(f"verification of {what} {master_id}: {exc}")
    return lines
