"""Issue #12, item 8: SSE event ids are per dialog (a counter shared by every tenant leaked
their activity) and keep Last-Event-ID resume working; a stream ends when its token expires.
Both failed on the code before the fix."""
from __future__ import annotations

import sqlite3

import aiohttp

from live_support import SseReader
from support import admin, pat_of

NO_READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)


async def _sse(gw, token, last_event_id=None):
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    resp = await gw.http.get(f"{gw.url}/dialog-status", params={"token": token}, headers=headers,
                             timeout=NO_READ_TIMEOUT)
    return resp, SseReader(resp)


async def test_sse_ids_are_per_dialog_not_a_count_shared_by_every_tenant(gateway):
    gw = gateway
    other_pat = pat_of(await admin(gw.settings, "bootstrap", "--tenant", "globex", "--profile", "retail"))
    for i in range(3):                                    # another tenant's activity
        tok = await gw.token(f"globex-{i}", tenant="globex", pat=other_pat)
        resp, r = await _sse(gw, tok)
        await r.until(lambda e: True)
        resp.close()
    tok = await gw.token("ids-call")
    resp, r = await _sse(gw, tok)
    first = await r.until(lambda e: True)
    assert first["id"] == "1" and first["data"] == {"status": "CALL_OPENED"}
    resp.close()
    # An id this dialog never issued (e.g. from a retired dialog of the same masterId): the
    # current state at once, not silence until something new happens.
    resp, r = await _sse(gw, tok, last_event_id=57)
    again = await r.until(lambda e: True, timeout=5)
    assert again["data"] == {"status": "CALL_OPENED"}
    resp.close()


async def test_an_sse_stream_ends_when_its_token_expires(gateway, monkeypatch):
    from gateway.web import sse
    from gateway.services.auth import token_hash
    gw = gateway
    monkeypatch.setattr(sse, "HEARTBEAT_S", 0.3)
    tok = await gw.token("expiring")
    resp, r = await _sse(gw, tok)
    await r.until(lambda e: True)
    db = sqlite3.connect(gw.settings.sqlite_path)           # age the token instead of sleeping
    db.execute("UPDATE sessions SET last_used_ms = last_used_ms - ? WHERE token_hash=?",
               (gw.settings.auth.token_idle_s * 1000 + 1000, token_hash(tok)))
    db.commit()
    db.close()
    end = await r.until(lambda e: e.get("event") == "end", timeout=10)
    assert end["data"] == {"reason": "TOKEN_EXPIRED"}
    assert await r.next(5) is None                           # and the response completes
    resp.close()
