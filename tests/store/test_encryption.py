"""Encryption at rest, on both stores: what is in the database is ciphertext under a named key;
records stay readable through a rotation and are re-sealed online; a ciphertext moved to
another user's row does not decrypt; sensitive biokey hashes are re-keyed from their encrypted
copies when the hash secret changes."""
from __future__ import annotations

import asyncio
import base64
import os

import pytest

from gateway.services.auth import Keyring
from gateway.store.base import Blocklist, StoredBiokey
from gateway.store.keys import DataKeys, KeyUnavailable, new_key
from store_support import make_store, vec, write


async def test_vectors_and_hashes_are_ciphertext_under_the_active_key(repo, profile, raw, data_keys):
    await repo.enrol(write(profile.id, "u1", seed=1, fingerprint=b"\x07" * 64))
    await repo.add_fingerprint(profile.id, "u1", "VERIFY", "c2", b"\x08" * 64)
    bl = await repo.create_blocklist(Blocklist(
        "", profile.tenant_id, profile.group_id, "f", "", "HIGH_RISK", "", "", True, 0, 0))
    await repo.add_blocklist_entry(profile.group_id, bl.id, "x", "wav:x", vec(9), 1000, "campp")
    for table, col, plain in (("voiceprints", "vector", vec(1)), ("blocklist_entries", "vector", vec(9))):
        [(blob, kid)] = await raw.rows(f"SELECT {col}, key_id FROM {table}")
        assert kid == data_keys.active_id and bytes(blob) != plain and plain[:32] not in bytes(blob)
    for blob, kid in await raw.rows("SELECT hashes, key_id FROM fingerprints"):
        assert kid == data_keys.active_id and b"\x07" * 16 not in bytes(blob) and b"\x08" * 16 not in bytes(blob)
    assert (await repo.voiceprints(profile.id, ["u1"]))["u1"].vector == vec(1)
    assert {f.hashes for f in await repo.fingerprints(profile.id, "u1")} == {b"\x07" * 64, b"\x08" * 64}
    usage = await repo.key_usage()
    assert usage["voiceprints"] == {data_keys.active_id: 1} and usage["fingerprints"] == {data_keys.active_id: 2}


async def test_a_ciphertext_moved_to_another_user_does_not_decrypt(repo, profile, raw):
    a, _ = await repo.enrol(write(profile.id, "a", seed=1))
    b, _ = await repo.enrol(write(profile.id, "b", seed=2))
    [(blob,)] = await raw.rows("SELECT vector FROM voiceprints WHERE user_row=?", a.row_id)
    await raw.execute("UPDATE voiceprints SET vector=? WHERE user_row=?", bytes(blob), b.row_id)
    with pytest.raises(KeyUnavailable):
        await repo.voiceprints(profile.id, ["b"])


async def test_rotation_keeps_old_records_readable_and_reseals_them_online(backend, profile, repo, raw, data_keys):
    old = data_keys
    for i in range(5):
        await repo.enrol(write(profile.id, f"u{i}", seed=i, fingerprint=bytes([i]) * 32))
    # rotate: the new key first, the old one still readable
    rotated = DataKeys([new_key(), *old.raw_keys()])
    store = make_store(*backend, rotated)
    await store.open()
    try:
        await store.enrol(write(profile.id, "fresh", seed=42))
        assert (await raw.rows("SELECT key_id FROM voiceprints WHERE user_row=?",
                               (await store.get_user(profile.id, "fresh")).row_id))[0][0] == rotated.active_id
        got = await store.voiceprints(profile.id, [f"u{i}" for i in range(5)])
        assert [got[f"u{i}"].vector for i in range(5)] == [vec(i) for i in range(5)]
        # re-sealing in small batches while enrolments go on (the gateway keeps serving)
        total = 0

        async def reseal():
            nonlocal total
            while n := await store.reencrypt(batch=2):
                total += n
        await asyncio.gather(reseal(), *(store.enrol(write(profile.id, f"live{i}", seed=100 + i)) for i in range(3)))
        assert total == 10           # 5 voiceprints + 5 fingerprints under the old key
        usage = await store.key_usage()
        assert all(set(per_key) <= {rotated.active_id} for per_key in usage.values()), usage
    finally:
        await store.close()
    # the old key can be retired: the new key alone reads everything, the old alone nothing
    only_new = make_store(*backend, DataKeys(rotated.raw_keys()[:1]))
    await only_new.open()
    try:
        got = await only_new.voiceprints(profile.id, ["u0", "u4", "fresh", "live2"])
        assert got["u4"].vector == vec(4) and got["live2"].vector == vec(102)
        assert {f.hashes for f in await only_new.fingerprints(profile.id, "u3")} == {bytes([3]) * 32}
    finally:
        await only_new.close()
    only_old = make_store(*backend, DataKeys(old.raw_keys()))
    await only_old.open()
    try:
        with pytest.raises(KeyUnavailable, match=rotated.active_id):
            await only_old.voiceprints(profile.id, ["u0"])
    finally:
        await only_old.close()


async def test_plaintext_records_from_before_encryption_are_read_and_sealed(backend, profile, repo, raw, data_keys):
    plain_store = make_store(*backend, None)          # a store written before encryption at rest
    await plain_store.open()
    try:
        await plain_store.enrol(write(profile.id, "legacy", seed=3, fingerprint=b"\x04" * 16))
    finally:
        await plain_store.close()
    assert await raw.rows("SELECT vector, key_id FROM voiceprints") == [(vec(3), None)]
    assert (await repo.voiceprints(profile.id, ["legacy"]))["legacy"].vector == vec(3)
    assert (await repo.key_usage())["voiceprints"] == {None: 1}
    assert await repo.reencrypt() == 2
    [(blob, kid)] = await raw.rows("SELECT vector, key_id FROM voiceprints")
    assert kid == data_keys.active_id and bytes(blob) != vec(3)
    assert (await repo.voiceprints(profile.id, ["legacy"]))["legacy"].vector == vec(3)


async def test_sensitive_biokeys_are_rekeyed_when_the_hash_secret_changes(repo, profile, raw):
    k1, k2 = Keyring(b"first secret"), Keyring(b"second secret")
    assert k1.key_id != k2.key_id

    def sensitive(keyring, value):
        return StoredBiokey("DoB", keyring.biokey_value(profile.id, "DoB", value), True, plain=value,
                            hash_key_id=keyring.key_id)
    await repo.enrol(write(profile.id, "u1", biokeys=[sensitive(k1, "09121990")]))
    await repo.enrol(write(profile.id, "u2", biokeys=[sensitive(k1, "01011980")]))
    rows = await raw.rows("SELECT value, value_enc, hash_key_id FROM biokeys WHERE key='DoB'")
    assert all(h == k1.key_id and b"09121990" not in bytes(enc) and "09121990" not in v for v, enc, h in rows)
    # the secret changes: searches under the new secret find nobody until the hashes are re-keyed
    assert await repo.search_users(profile.id, [("DoB", k2.biokey_value(profile.id, "DoB", "09121990"))]) == []
    [usage] = await repo.hash_key_usage()
    assert (usage.key_id, usage.rows, usage.rekeyable) == (k1.key_id, 2, 2)
    assert await repo.rekey_biokeys(k2.key_id, k2.biokey_value, batch=1) == 1
    assert await repo.rekey_biokeys(k2.key_id, k2.biokey_value, batch=10) == 1
    assert await repo.rekey_biokeys(k2.key_id, k2.biokey_value) == 0
    found = await repo.search_users(profile.id, [("DoB", k2.biokey_value(profile.id, "DoB", "09121990"))])
    assert [u.user_id for u in found] == ["u1"]
    assert [(u.key_id, u.rows) for u in await repo.hash_key_usage()] == [(k2.key_id, 2)]


async def test_legacy_biokey_hashes_get_the_current_key_id(repo, profile, raw):
    k = Keyring(b"s")
    await repo.enrol(write(profile.id, "u1", biokeys=[StoredBiokey("DoB", k.biokey_value(profile.id, "DoB", "1"),
                                                                   True)]))
    assert [(u.key_id, u.rekeyable) for u in await repo.hash_key_usage()] == [(None, 0)]
    assert await repo.stamp_legacy_hashes(k.key_id) == 1
    assert [(u.key_id, u.rows) for u in await repo.hash_key_usage()] == [(k.key_id, 1)]


def test_a_keys_file_is_followed_and_keys_are_never_mixed_up(tmp_path):
    from gateway.store.keys import KeyConfigError, key_id, parse_keys, write_keys_file
    path = tmp_path / "data.keys"
    k1, k2 = new_key(), new_key()
    write_keys_file(path, [k1])
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    keys = DataKeys.load(tmp_path, path, "", create=False)
    blob, kid = keys.seal(b"voiceprint", b"ad")
    assert kid == key_id(k1) and keys.reload() is False
    write_keys_file(path, [k2, k1])
    os.utime(path, ns=(1, 1))              # a different mtime even within the clock's resolution
    assert keys.reload() is True and keys.active_id == key_id(k2) and keys.open(blob, kid, b"ad") == b"voiceprint"
    with pytest.raises(KeyUnavailable):
        keys.open(blob, kid, b"other ad")
    with pytest.raises(KeyConfigError, match="32 bytes"):
        parse_keys("c2hvcnQ=", "env")
    # environment keys win over the file, the first is active
    env = DataKeys.load(tmp_path, path, f"{base64.b64encode(k1).decode()}, ", create=False)
    assert env.ids == [key_id(k1)] and env.path is None
