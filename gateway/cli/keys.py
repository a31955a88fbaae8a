"""`vbgw admin rotate-key` and `vbgw admin rekey-biokeys` (docs/security.md, "Encryption at
rest and key rotation").

rotate-key: a new data key is put first in the keys file (so it seals every new write), the
command waits until running gateways have re-read the file (2 x encryption.reload_s), then
re-seals every record not under the new key in small transactions while the gateways keep
serving; older keys stay in the file, readable, until `--retire` removes those no record uses.
With keys from VBGW_ENCRYPTION__KEYS the operator puts the new key first there and restarts the
instances; the command then only re-seals (`--reencrypt-only` is implied).

rekey-biokeys: after auth.hash_secret (or <data_dir>/secret.key) changed, recomputes the HMAC of
every sensitive biokey from its encrypted copy under the current secret."""
from __future__ import annotations

import asyncio
import sys

from gateway.store.keys import DataKeys, key_id, new_key, parse_keys, write_keys_file


def add_cli(asub) -> None:
    r = asub.add_parser("rotate-key", help="new data key for encryption at rest; re-encrypt stored records online")
    r.add_argument("--reencrypt-only", action="store_true",
                   help="no new key: re-seal records not under the active key (after an upgrade or an env rotation)")
    r.add_argument("--retire", action="store_true",
                   help="afterwards, drop older keys from the keys file when no record uses them")
    r.add_argument("--batch", type=int, default=200, help="records per transaction")
    k = asub.add_parser("rekey-biokeys",
                        help="recompute sensitive biokey hashes under the current auth.hash_secret")
    k.add_argument("--batch", type=int, default=200, help="biokeys per transaction")


def _usage_line(usage: dict[str, dict[str | None, int]]) -> str:
    parts = []
    for table, per_key in usage.items():
        if per_key:
            parts.append(table + " " + ", ".join(f"{kid or 'plaintext'}={n}" for kid, n in sorted(
                per_key.items(), key=lambda kv: str(kv[0]))))
    return "; ".join(parts) or "no records"


async def run(args, settings) -> int:
    from gateway.store.factory import build_repository, load_data_keys
    if args.admin_cmd == "rekey-biokeys":
        return await _rekey_biokeys(args, settings)
    enc = settings.encryption
    from_env = bool(enc.keys.get_secret_value().strip())
    path = DataKeys.file_path(settings.data_dir, enc.keys_file)
    if not from_env and not path.exists():
        write_keys_file(path, [new_key()])      # the first key: nothing to re-seal but plaintext rows
        print(f"created {path} with data key {DataKeys.load(settings.data_dir, path, '', False).active_id}")
        args.reencrypt_only = True
    keys = load_data_keys(settings)
    if not args.reencrypt_only and not from_env:
        assert keys.path is not None
        fresh = new_key()
        write_keys_file(keys.path, [fresh, *keys.raw_keys()])
        keys = DataKeys(parse_keys(keys.path.read_text(), str(keys.path)), keys.path)
        print(f"new active data key {key_id(fresh)} written to {keys.path}; older keys kept readable: "
              f"{', '.join(keys.ids[1:]) or 'none'}")
        wait = 2 * enc.reload_s
        print(f"waiting {wait:g} s for running gateways to re-read the keys file", flush=True)
        await asyncio.sleep(wait)
    elif from_env and not args.reencrypt_only:
        print("keys come from VBGW_ENCRYPTION__KEYS: put the new key first there and restart the gateways; "
              f"re-encrypting to the active key {keys.active_id} now")
    store = build_repository(settings, keys)
    await store.open()
    try:
        total = 0
        while True:
            n = await store.reencrypt(args.batch)
            total += n
            if n == 0:
                break
            print(f"re-encrypted {total} records", flush=True)
        usage = await store.key_usage()
        print(f"done: {total} records re-encrypted under {keys.active_id}; {_usage_line(usage)}")
        if args.retire:
            if from_env:
                print("--retire: keys come from VBGW_ENCRYPTION__KEYS; remove old keys there", file=sys.stderr)
                return 2
            used = {kid for per_key in usage.values() for kid, n in per_key.items() if n}
            keep = [k for k in keys.raw_keys() if key_id(k) == keys.active_id or key_id(k) in used]
            dropped = [key_id(k) for k in keys.raw_keys() if k not in keep]
            assert keys.path is not None
            write_keys_file(keys.path, keep)
            print(f"retired keys: {', '.join(dropped) or 'none'}")
    finally:
        await store.close()
    return 0


async def _rekey_biokeys(args, settings) -> int:
    from gateway.services.auth import Keyring, load_or_create_secret
    from gateway.store.factory import open_repository
    keyring = Keyring(load_or_create_secret(settings.data_dir, settings.auth.hash_secret.get_secret_value()))
    store = await open_repository(settings)
    try:
        total = 0
        while n := await store.rekey_biokeys(keyring.key_id, keyring.biokey_value, args.batch):
            total += n
            print(f"re-keyed {total} biokeys", flush=True)
        left = [u for u in await store.hash_key_usage() if u.key_id not in (None, keyring.key_id)]
        print(f"done: {total} sensitive biokeys re-keyed to hash key {keyring.key_id}")
        if left:
            print(f"{sum(u.rows for u in left)} sensitive biokeys stored before encrypted copies were kept stay "
                  f"under hash key(s) {', '.join(str(u.key_id) for u in left)}: they match again once the user "
                  "is enrolled again with the biokey", file=sys.stderr)
            return 1
    finally:
        await store.close()
    return 0
