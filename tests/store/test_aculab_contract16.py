"""Issue #16 items 6 and 7 in the repository, both stores: verification fingerprints kept over
a retention period (bounded, purged with the user) and the Aculab calls' costs."""
from __future__ import annotations

import asyncio

from gateway.infra.clock import now_ms
from gateway.store.base import AculabCall
from store_support import write


async def test_verify_fingerprints_cover_the_retention_period_not_the_last_20(repo, profile):
    await repo.enrol(write(profile.id, "u1", fingerprint=b"\x01" * 16))
    for i in range(30):
        assert await repo.add_fingerprint(profile.id, "u1", "VERIFY", f"call-{i}", bytes([i]) * 8,
                                          keep_verify=1000, max_age_ms=3600_000)
    fps = await repo.fingerprints(profile.id, "u1")
    assert [f.dialog_id for f in fps if f.kind == "VERIFY"] == [f"call-{i}" for i in range(30)]
    # bounded: at most keep_verify, the most recent
    assert await repo.add_fingerprint(profile.id, "u1", "VERIFY", "call-30", b"\x30" * 8, keep_verify=25,
                                      max_age_ms=3600_000)
    fps = await repo.fingerprints(profile.id, "u1")
    assert [f.dialog_id for f in fps if f.kind == "VERIFY"] == [f"call-{i}" for i in range(6, 31)]
    # older than the retention period: gone at the next verification; enrolment fingerprints stay
    await asyncio.sleep(0.02)
    assert await repo.add_fingerprint(profile.id, "u1", "VERIFY", "call-31", b"\x31" * 8, keep_verify=1000,
                                      max_age_ms=10)
    fps = await repo.fingerprints(profile.id, "u1")
    assert [(f.kind, f.dialog_id) for f in fps] == [("ENROL", "d-u1-1"), ("VERIFY", "call-31")]
    # purged with the user
    await repo.opt_out(profile.id, "u1")
    assert await repo.fingerprints(profile.id, "u1") == []


async def test_aculab_calls_and_their_costs(repo, profile):
    t = now_ms()
    await repo.add_aculab_call(AculabCall("vb-1", profile.id, "register", "DONE", 50_000, t), keep_ms=3600_000)
    await repo.add_aculab_call(AculabCall("vb-2", profile.id, "verify", "ISSUED", 0, t), keep_ms=3600_000)
    assert await repo.get_aculab_call(profile.id, "vb-1") == AculabCall("vb-1", profile.id, "register", "DONE",
                                                                        50_000, t)
    assert await repo.get_aculab_call("prof_other", "vb-1") is None           # another profile's call
    assert await repo.update_aculab_call("vb-2", "STARTED", 0) is True
    assert await repo.update_aculab_call("vb-2", "DONE", 12_500) is True
    assert await repo.update_aculab_call("vb-2", "DONE", 99) is False         # a DONE call never changes
    assert (await repo.get_aculab_call(profile.id, "vb-2")).cost_micros == 12_500
    assert await repo.update_aculab_call("vb-none", "DONE", 1) is False
    # bounded: calls older than keep_ms go when the next one is recorded
    await asyncio.sleep(0.02)
    await repo.add_aculab_call(AculabCall("vb-3", profile.id, "update", "DONE", 0, now_ms()), keep_ms=10)
    assert await repo.get_aculab_call(profile.id, "vb-1") is None
    assert await repo.get_aculab_call(profile.id, "vb-3") is not None
