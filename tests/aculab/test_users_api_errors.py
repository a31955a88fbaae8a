"""Authentication, isolation between tenants and profiles, and bad input: each answered in the
seed's error envelope with a stable vbgw code, never a traceback."""
from __future__ import annotations

import numpy as np

from aculab_support import (
    USERS, Client, assert_error, assert_insufficient_speech, basic, pcm, raw_basic, sources, user_group_key, wav_bytes, wav_file,
)
from gateway.services.aculab import confidence
from support import admin

ACTIONS = {"register": ("PUT", "POST", "GET"), "update": ("PUT", "POST", "GET"), "verify": ("PUT", "POST", "GET"),
           "stats": ("GET", "POST"), "exists": ("GET", "POST"), "delete": ("GET", "POST")}


async def test_every_endpoint_authenticates(gateway):
    gw = gateway
    key = await user_group_key(gw)
    cl = Client(gw, key)
    for action, methods in ACTIONS.items():
        for method in methods:
            status, body = await cl.call(method, action, auth=None, params={"user_id": "u1"})
            assert_error(status, body, 401, "UNAUTHORIZED", action)
    r = await gw.http.get(f"{gw.url}{USERS}/exists", params={"user_id": "u1"})
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")
    bad = [basic("acme", "ak-00000000-0000-4000-8000-000000000000"),   # not a key
           basic("acme", gw.pat),                                      # a PAT is not a user group key
           raw_basic("acme", key),                                     # username without cloudID/
           basic("other-cloud", key)]                                  # the key of another cloud ID
    for auth in bad:
        assert_error(*await cl.call("GET", "exists", auth=auth, params={"user_id": "u1"}), 401, "UNAUTHORIZED",
                     "exists")
    for header in (f"Bearer {gw.pat}", "Basic !!not-base64!!", raw_basic("acme/bob", "")):
        assert_error(*await cl.call("GET", "exists", auth=header, params={"user_id": "u1"}), 401, "UNAUTHORIZED",
                     "exists")
    # The tenant id works as the cloud ID as well as its name.
    tenant_id = (await admin(gw.settings, "profiles")).split("\t")[1]
    status, body = await cl.call("GET", "exists", auth=basic(tenant_id, key), params={"user_id": "u1"})
    assert_error(status, body, 404, "NOT_REGISTERED", "exists")        # authenticated: u1 is just unknown


async def test_a_key_reaches_only_its_own_profile(gateway):
    gw = gateway
    acme = Client(gw, await user_group_key(gw))
    await admin(gw.settings, "bootstrap", "--tenant", "globex", "--profile", "retail")
    globex = Client(gw, await user_group_key(gw, "globex", "retail"), "globex")
    await admin(gw.settings, "profile", "--tenant", "acme", "--name", "wholesale")
    wholesale = Client(gw, await user_group_key(gw, "acme", "wholesale"))

    status, body = await acme.put("register", "carol", wav_file("1688_enrol0"))
    assert status == 200, body
    for other in (globex, wholesale):
        assert_error(*await other.call("GET", "exists", params={"user_id": "carol"}), 404, "NOT_REGISTERED",
                     "exists")
        assert_error(*await other.call("GET", "stats", params={"user_id": "carol"}), 404, "NOT_REGISTERED", "stats")
        assert_error(*await other.call("POST", "delete", params={"user_id": "carol"}), 404, "NOT_REGISTERED",
                     "delete")
        assert_error(*await other.put("verify", "carol", wav_file("1688_test1")), 400, "USER_NOT_FOUND", "verify")
        assert_error(*await other.put("update", "carol", wav_file("1688_enrol1")), 400, "USER_NOT_FOUND", "update")
    # A globex key with acme's cloud ID is refused, not routed to acme.
    assert_error(*await globex.call("GET", "exists", auth=basic("acme", globex.key),
                                    params={"user_id": "carol"}), 401, "UNAUTHORIZED", "exists")
    status, body = await acme.call("GET", "exists", params={"user_id": "carol"})
    assert body["exists"] is True
    # The same user id in another profile is another user.
    status, body = await wholesale.put("register", "carol", wav_file("1688_enrol1"))
    assert status == 200, body
    status, body = await acme.call("GET", "stats", params={"user_id": "carol"})
    assert status == 200 and body["user_group_name"] == "retail"


async def test_bad_input_gets_stable_errors(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    speech = pcm("1688_test1")
    cases = [
        (b"RIFF....not really a wav file", 415, "BAD_AUDIO"),
        (b"", 400, "FILE_REQUIRED"),
        (wav_bytes(np.stack([speech, speech], axis=1)), 415, "NOT_MONO"),
        (wav_bytes(np.tile(speech, 16)), 415, "AUDIO_TOO_LONG"),                 # 64 s
        (wav_bytes(speech.astype(np.float32) / 32768, subtype="FLOAT"), 415, "UNSUPPORTED_ENCODING"),
        (wav_bytes(speech[::2], rate=4000), 415, "BAD_SAMPLE_RATE"),
    ]
    for data, status, code in cases:
        assert_error(*await cl.put("register", "dave", data), status, code, "register")
        assert_error(*await cl.call("POST", "update", params={"user_id": "dave"}, data=sources(("Source1", data))),
                     400, "USER_NOT_FOUND", "update")     # the user is checked before the audio
    # 60 s or less, a-law and 16-bit PCM at 16 kHz are accepted formats (then too little speech here).
    for data in (wav_bytes(speech, subtype="ALAW"), wav_bytes(np.repeat(speech, 2), rate=16000)):
        assert_insufficient_speech(*await cl.put("register", "dave", data), "register")

    for uid, code in (("bob smith", "BAD_USER_ID"), ("bob_1", "BAD_USER_ID"), ("x" * 129, "BAD_USER_ID"),
                      ("", "BAD_USER_ID")):
        assert_error(*await cl.call("GET", "exists", params={"user_id": uid}), 400, code, "exists")
    assert_error(*await cl.call("GET", "stats"), 400, "USER_ID_REQUIRED", "stats")
    status, body = await cl.put("verify", "dave", wav_file("1688_test1"), sensitivity="11")
    assert_error(status, body, 400, "BAD_PARAMETER", "verify")
    assert "sensitivity" in body["error"]["text"]
    assert_error(*await cl.put("verify", "dave", wav_file("1688_test1"), enable_pad="maybe"), 400,
                 "BAD_PARAMETER", "verify")
    # fetch.allowed_hosts is empty by default: no URL is fetched (tests/aculab/test_wav_file_url.py)
    assert_error(*await cl.call("POST", "register", params={"user_id": "dave", "wav_file_url": "http://x/a.wav"}),
                 400, "FETCH_DISABLED", "register")
    assert_error(*await cl.call("POST", "register", params={"user_id": "dave"}, data=b"raw"), 415,
                 "UNSUPPORTED_MEDIA_TYPE", "register")
    assert_error(*await cl.call("POST", "register", params={"user_id": "dave"},
                                data=sources(("file", wav_file("1688_test1")))), 400, "BAD_SOURCE_NAME", "register")
    assert_error(*await cl.call("POST", "verify", params={"user_id": "dave"},
                                data=sources(("Source1", b"a"), ("Source2", b"b"))), 400, "TOO_MANY_SOURCES", "verify")
    assert_error(*await cl.put("verify", "nobody", wav_file("1688_test1")), 400, "USER_NOT_FOUND", "verify")
    # All sources unusable: the first one's reason.
    assert_error(*await cl.call("POST", "register", params={"user_id": "dave"},
                                data=sources(("Source1", b"junk"), ("Source2", wav_bytes(speech[:4000])))), 415,
                 "BAD_AUDIO", "register")
    assert_error(*await cl.call("DELETE", "register", params={"user_id": "dave"}), 405, "METHOD_NOT_ALLOWED", "users")
    assert_error(*await cl.call("GET", "nonsense"), 404, "NOT_FOUND", "users")
    assert_error(*await cl.call("GET", "exists", params={"user_id": "dave"}), 404, "NOT_REGISTERED",
                 "exists")          # nothing above registered anyone


def test_confidence_is_one_at_the_threshold():
    assert confidence(-1.0, -1.0, 3.0) == (True, 1.0)
    assert confidence(3.0, -1.0, 3.0) == (True, 2.0)
    assert confidence(-5.0, -1.0, 3.0) == (False, 0.5)
    # just below the threshold must not round up to a passing value
    assert confidence(-1.0 - 1e-6, -1.0, 3.0) == (False, 0.999)
    # degenerate bands: the span is at least one llr unit
    assert confidence(0.0, -1.0, -1.0) == (True, 2.0)


async def test_user_group_key_cli(settings):
    import io
    import sqlite3
    from contextlib import redirect_stderr

    from gateway.cli.main import _admin, build_parser
    await admin(settings, "bootstrap", "--tenant", "acme", "--profile", "retail")
    key = (await admin(settings, "user-group-key", "--tenant", "acme", "--profile", "retail")).strip().splitlines()[-1]
    assert key.startswith("key=ak-")
    db = sqlite3.connect(settings.sqlite_path)
    try:
        (stored,) = db.execute("SELECT key_hash FROM user_group_keys").fetchone()
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert len(stored) == 64 and key[4:] not in dump          # kept only as its SHA-256
    for tenant, profile in (("acme", "nope"), ("nobody", "retail")):
        args = build_parser(include_bench=False).parse_args(
            ["admin", "--data-dir", str(settings.data_dir), "user-group-key", "--tenant", tenant, "--profile", profile])
        err = io.StringIO()
        with redirect_stderr(err):
            assert await _admin(args) == 2
        assert "no VB profile" in err.getvalue()


async def test_a_repeated_user_id_is_refused_never_half_read(gateway):
    """Issue #11: `user_id=carol&user_id=dave` used to read carol alone (and register, verify or
    delete her). A repeated parameter is a 400 now, whichever action and form it comes in."""
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    status, body = await cl.put("register", "carol", wav_file("1688_enrol0"))
    assert status == 200, body
    both = [("user_id", "carol"), ("user_id", "dave")]
    assert_error(*await cl.call("GET", "exists", params=both), 400, "BAD_USER_ID", "exists")
    assert_error(*await cl.call("PUT", "verify", params=both, data=wav_file("1688_test1")), 400, "BAD_USER_ID",
                 "verify")
    assert_error(*await cl.call("POST", "delete", params=both), 400, "BAD_USER_ID", "delete")
    assert_error(*await cl.call("POST", "delete", params={"user_id": "carol"}, data={"user_id": "dave"}), 400,
                 "BAD_USER_ID", "delete")
    assert_error(*await cl.put("verify", "carol", wav_file("1688_test1"), sensitivity=["1", "2"]), 400,
                 "BAD_PARAMETER", "verify")
    status, body = await cl.call("GET", "exists", params={"user_id": "carol"})
    assert status == 200 and body["exists"] is True          # nothing above deleted her
