"""The PAD check's cache of users' stored fingerprints (gateway/services/stored_prints.py),
against SQLite and PostgreSQL: every check answers exactly as matching each stored row then
in the store would, reads only rows it has not seen, forgets deleted ones, keeps profiles
apart and stays within its memory bound."""
from __future__ import annotations

from engine.fraud import fingerprint, match, pack, pad_detected, unpack
from gateway.services.stored_prints import StoredPrints
from store_support import write
from support import protocol_audio
from tools.protocol import read_audio


def prints_of(name: str) -> bytes:
    return pack(*fingerprint(read_audio(protocol_audio("ls-other-tel", name))))


class Counting:
    """The repository, recording which rows `fingerprints` was asked for."""

    def __init__(self, repo):
        self.repo, self.reads = repo, []

    def __getattr__(self, name):
        return getattr(self.repo, name)

    async def fingerprints(self, profile_id, user_id, ids=None):
        self.reads.append(sorted(ids) if ids is not None else None)
        return await self.repo.fingerprints(profile_id, user_id, ids=ids)


async def run(fn):
    return fn()


async def expected(repo, profile_id, user_id, query, exclude=None):
    return [(f.kind, match(query, unpack(f.hashes))) for f in await repo.fingerprints(profile_id, user_id)
            if f.dialog_id != exclude]


async def test_checks_match_the_store_and_read_only_new_rows(repo, profile):
    a, b, c, d = (prints_of(n) for n in ("1688_enrol0", "1688_test0", "1998_test0", "1998_enrol0"))
    await repo.enrol(write(profile.id, "u1", fingerprint=a))
    await repo.add_fingerprint(profile.id, "u1", "VERIFY", "call-1", b)
    await repo.add_fingerprint(profile.id, "u1", "VERIFY", "call-2", c)
    store = Counting(repo)
    cache = StoredPrints(store, run)
    replay_of_enrolment = unpack(a)[0][::3], unpack(a)[1][::3]       # a third of the enrolment's hashes
    replay_of_call_1 = unpack(b)

    got = await cache.get(profile.id, "u1")
    ids = [r.id for r in await repo.fingerprint_refs(profile.id, "u1")]
    assert store.reads == [ids] and got
    for q in (replay_of_enrolment, replay_of_call_1):
        assert got.matches(q) == await expected(repo, profile.id, "u1", q)
    assert pad_detected(got.matches(replay_of_enrolment)) == {"type": "TypeB"}
    assert pad_detected(got.matches(replay_of_call_1)) == {"type": "TypeA"}
    # the call itself is left out (its own fingerprint, stored at a refined result, is not a replay)
    assert pad_detected(got.matches(replay_of_call_1, exclude_dialog="call-1")) is None
    assert got.matches(None) == []

    await cache.get(profile.id, "u1")
    assert len(store.reads) == 1                         # nothing new: nothing read
    await repo.add_fingerprint(profile.id, "u1", "VERIFY", "call-3", d)
    got = await cache.get(profile.id, "u1")
    new_id = (await repo.fingerprint_refs(profile.id, "u1"))[-1].id
    assert store.reads[-1] == [new_id]
    assert len(got.blocks) == 1                          # merged into the block, not one per call
    assert got.matches(unpack(d)) == await expected(repo, profile.id, "u1", unpack(d))

    # retention drops the oldest VERIFY rows: a block mostly of deleted rows is rebuilt from
    # the live ones (read again), and no answer comes from a deleted row
    await repo.add_fingerprint(profile.id, "u1", "VERIFY", "call-4", b, keep_verify=1)
    live = await repo.fingerprint_refs(profile.id, "u1")
    assert [r.dialog_id for r in live] == ["d-u1-1", "call-4"]
    got = await cache.get(profile.id, "u1")
    assert store.reads[-1] == [r.id for r in live]
    for q in (replay_of_enrolment, replay_of_call_1, unpack(c)):
        assert got.matches(q) == await expected(repo, profile.id, "u1", q)
    assert len(got.matches(unpack(c))) == 2

    # forgotten (what opt-out does first): nothing kept, the next check reads every row again
    cache.forget(profile.id, "u1")
    assert cache.nbytes == 0
    reads = len(store.reads)
    got = await cache.get(profile.id, "u1")
    assert store.reads[reads:] == [[r.id for r in live]] and cache.nbytes == got.nbytes() > 0

    await repo.opt_out(profile.id, "u1")
    got = await cache.get(profile.id, "u1")
    assert not got and got.matches(replay_of_call_1) == [] and cache.nbytes == 0


async def test_profiles_and_users_are_kept_apart_within_the_memory_bound(repo, profile):
    other = await repo.create_profile(profile.tenant_id, profile.group_id, "other", profile.settings)
    a, b = prints_of("1688_enrol0"), prints_of("1998_enrol0")
    await repo.enrol(write(profile.id, "u1", fingerprint=a))
    await repo.enrol(write(other.id, "u1", fingerprint=b))
    await repo.enrol(write(profile.id, "u2", fingerprint=b))
    cache = StoredPrints(Counting(repo), run)
    mine, theirs = await cache.get(profile.id, "u1"), await cache.get(other.id, "u1")
    assert pad_detected(mine.matches(unpack(a))) == {"type": "TypeB"}
    assert pad_detected(mine.matches(unpack(b))) is None           # the other profile's user
    assert pad_detected(theirs.matches(unpack(b))) == {"type": "TypeB"}
    one = mine.nbytes()
    assert cache.nbytes == one + theirs.nbytes() and one == 12 * len(a) // 8

    # room for about one user: the least recently used leaves, the accounting stays exact
    small = StoredPrints(Counting(repo), run, max_bytes=one + one // 2)
    await small.get(profile.id, "u1")
    await small.get(profile.id, "u2")
    assert small.nbytes == (await small.get(profile.id, "u2")).nbytes() <= small.max_bytes
    assert len(small.store.reads) == 2
    got = await small.get(profile.id, "u1")                        # evicted: read again
    assert len(small.store.reads) == 3 and got.matches(unpack(a)) == await expected(repo, profile.id, "u1", unpack(a))
    # nothing kept at all with no memory for it; every check still answers
    none = StoredPrints(Counting(repo), run, max_bytes=0)
    for _ in range(2):
        assert pad_detected((await none.get(profile.id, "u1")).matches(unpack(a))) == {"type": "TypeB"}
    assert none.nbytes == 0 and len(none.store.reads) == 2


async def test_blocks_split_at_their_bound_and_answer_the_same(repo, profile, monkeypatch):
    import gateway.services.stored_prints as sp
    names = ["1688_enrol0", "1688_test0", "1998_test0", "1998_enrol0", "1688_enrol1"]
    prints = [prints_of(n) for n in names]
    monkeypatch.setattr(sp, "BLOCK_ENTRIES", max(len(p) // 8 for p in prints) + 50)
    await repo.enrol(write(profile.id, "u1", fingerprint=prints[0]))
    cache = StoredPrints(Counting(repo), run)
    await cache.get(profile.id, "u1")
    for i, p in enumerate(prints[1:]):
        await repo.add_fingerprint(profile.id, "u1", "VERIFY", f"call-{i}", p)
        if i == 1:
            await cache.get(profile.id, "u1")               # rows arrive in twos and ones
    got = await cache.get(profile.id, "u1")
    assert len(got.blocks) >= 3 and all(b.index.entries <= sp.BLOCK_ENTRIES for b in got.blocks)
    assert sum(len(b.refs) for b in got.blocks) == len(prints)
    for p in prints:
        assert got.matches(unpack(p)) == await expected(repo, profile.id, "u1", unpack(p))
