"""Issue #16 items 4 to 9: the Aculab Users API against Aculab's document, as an integrator
built against it would use it. Each test reproduced its finding on the code before the fix."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly
from yarl import URL

from aculab_support import DATE_RE, Client, assert_error, assert_insufficient_speech, pcm, sources, user_group_key, wav_bytes, wav_file
from gateway.errors import ApiError
from gateway.services.auth import token_hash
from gateway.web.appkeys import SERVICES

PRICES = {"register": 0.05, "update": 0.02, "verify": 0.0125}


@pytest.fixture
def settings(settings):
    settings.aculab_costs.register_usd = PRICES["register"]
    settings.aculab_costs.update_usd = PRICES["update"]
    settings.aculab_costs.verify_usd = PRICES["verify"]
    return settings


async def _ws(gw, cl: Client, action: str, audio: bytes, **params) -> dict:
    """GET the one-time URL, stream `audio`, send audio_sent: the one answer."""
    status, got = await cl.call("GET", action, params=params)
    assert status == 200, got
    async with gw.http.ws_connect(got["url"]) as ws:
        if audio:
            await ws.send_bytes(audio)
        await ws.send_json({"event": "audio_sent"})
        return await ws.receive_json()


# -- item 4: the WebSocket error table's codes -------------------------------------------------
async def test_websocket_rejects_carry_the_documents_codes(gateway):
    """Aculab's WebSocket error table: 50 bad request, 51 unusable audio, 52 not enough speech,
    60 server exception, 61 service disabled. vbgw sent the HTTP status (400, 415, 422)."""
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    reply = await _ws(gw, cl, "verify", wav_file("1688_test1"), user_id="nobody")
    assert reply == {"event": "reject", "reason": "Bad Request", "code": 50, "vbgw_code": "USER_NOT_FOUND",
                     "message": "Bad API request, verify: user_id 'nobody' not found"}, reply
    reply = await _ws(gw, cl, "register", b"RIFF....not really a wav file", user_id="u1")
    assert (reply["code"], reply["vbgw_code"]) == (51, "BAD_AUDIO"), reply
    reply = await _ws(gw, cl, "register", wav_bytes(np.zeros(16000, np.int16)), user_id="u1")
    assert (reply["code"], reply["vbgw_code"]) == (52, "LOW_DATA"), reply
    status, got = await cl.call("GET", "register", params={"user_id": "u1"})
    async with gw.http.ws_connect(got["url"]) as ws:
        await ws.send_str('{"event": "something_else"}')
        reply = await ws.receive_json()
    assert (reply["code"], reply["vbgw_code"]) == (50, "BAD_MESSAGE"), reply
    # every status vbgw can meet maps to a row of the table
    from gateway.web.aculab import websocket_reject
    for status, code in ((400, 50), (404, 50), (408, 50), (409, 50), (413, 51), (415, 51), (422, 52), (500, 60),
                         (503, 61)):
        assert websocket_reject(ApiError(status, "X", "m"), "verify")["code"] == code, status


# -- item 5: every WAV the document allows ----------------------------------------------------
def _wav(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


async def test_wav_formats_the_document_allows_are_accepted(gateway):
    """Mono WAV, 16-bit PCM / a-law / mu-law, at least 8 kHz: WAVE_FORMAT_EXTENSIBLE files and
    rates such as 10 kHz and 96 kHz were refused (415)."""
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    speech = pcm("1688_enrol0")
    cases = {"wavex": _wav(speech, 8000, "WAVEX"),
             "wavex-ulaw": _wav(speech, 8000, "WAVEX", "ULAW"),
             "rate-10k": _wav(resample_poly(speech.astype(np.float64), 5, 4).astype(np.int16), 10000),
             "rate-96k": _wav(resample_poly(speech.astype(np.float64), 12, 1).astype(np.int16), 96000),
             "pcm-24": _wav(speech, 8000, subtype="PCM_24")}
    for uid, data in cases.items():
        status, body = await cl.put("register", uid, data)
        assert status == 200, (uid, body)
    # below the document's floor, the document's reasons
    assert_error(*await cl.put("register", "u8", _wav(speech, 8000, subtype="PCM_U8")), 415,
                 "UNSUPPORTED_ENCODING", "register")
    status, body = await cl.put("register", "r7", _wav(speech[:40000], 7999))
    assert_error(status, body, 415, "BAD_SAMPLE_RATE", "register")


# -- item 6: exists, verification_date, application_status ------------------------------------
async def test_exists_404_verification_date_and_application_status(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    status, body = await cl.call("GET", "exists", params={"user_id": "Bill"})
    assert_error(status, body, 404, "NOT_REGISTERED", "exists")
    assert body["error"]["text"] == "Not found: user Id Bill is not a registered user."

    status, reg = await cl.put("register", "Bob", wav_file("1688_enrol0"))
    assert status == 200, reg
    status, st = await cl.call("GET", "stats", params={"user_id": "Bob"})
    assert status == 200 and "verification_date" in st and st["verification_date"] is None, st
    status, ver = await cl.put("verify", "Bob", wav_file("1688_test1"))
    assert status == 200, ver
    status, st = await cl.call("GET", "stats", params={"user_id": "Bob"})
    assert DATE_RE.match(st["verification_date"]), st

    async def app_status(instance_id: str, client: Client = cl):
        return await client.gw.call("GET", "/application_status", params={"application_instance_id": instance_id},
                                    headers={"Authorization": client.auth})
    for instance, price in ((reg["application_instance_id"], PRICES["register"]),
                            (ver["application_instance_id"], PRICES["verify"])):
        status, body = await app_status(instance)
        assert status == 200, body
        assert body == {"application_instance_id": instance, "cost": price, "costs_valid": True}, body
    # a POST with a source that fails costs the price too: the call was made
    status, upd = await cl.call("POST", "update", params={"user_id": "Bob"},
                                data=sources(("Source1", wav_file("1688_enrol1"))))
    assert (await app_status(upd["application_instance_id"]))[1]["cost"] == PRICES["update"]
    # the WebSocket form: the cost is not valid until the socket's call is done
    status, got = await cl.call("GET", "verify", params={"user_id": "Bob"})
    status, body = await app_status(got["application_instance_id"])
    assert status == 200 and body["costs_valid"] is False, body
    async with gw.http.ws_connect(got["url"]) as ws:
        await ws.send_bytes(wav_file("1688_test2"))
        await ws.send_json({"event": "audio_sent"})
        assert (await ws.receive_json())["event"] == "verify"
    status, body = await app_status(got["application_instance_id"])
    assert body == {"application_instance_id": got["application_instance_id"], "cost": PRICES["verify"],
                    "costs_valid": True}, body
    # another key's instance, or none, is not found; no key, 401
    from support import admin
    await admin(gw.settings, "profile", "--tenant", "acme", "--name", "wholesale")
    other = Client(gw, await user_group_key(gw, "acme", "wholesale"))
    status, body = await app_status(reg["application_instance_id"], other)
    assert status == 404 and body["error"]["vbgw_code"] == "NOT_FOUND", body
    status, body = await app_status("vb-00000000000000000000.000001")
    assert status == 404, body
    status, body = await gw.call("GET", "/application_status", params={"application_instance_id": "x"})
    assert status == 401, body


# -- item 7: replay of an attempt older than the last 20 ----------------------------------------
async def test_a_replay_of_an_older_verification_is_still_type_a(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    status, body = await cl.put("register", "carol", wav_file("1688_enrol0"))
    assert status == 200, body
    status, first = await cl.put("verify", "carol", wav_file("1688_test1"), enable_pad="true")
    assert status == 200 and "pad_detected" not in first, first
    # 30 later verifications of the user (other audio: landmarks that match nothing)
    store = gw.app[SERVICES].store
    profile_id = (await store.find_user_group_key(token_hash(cl.key))).profile_id
    rng = np.random.default_rng(16)
    for i in range(30):
        blob = np.stack([rng.integers(0, 2**32, 400, dtype=np.uint64).astype("<u4"),
                         np.arange(400, dtype="<u4")], axis=1).tobytes()
        assert await store.add_fingerprint(profile_id, "carol", "VERIFY", f"later-{i}", blob,
                                           keep_verify=gw.settings.fraud.keep_verify_fingerprints,
                                           max_age_ms=int(gw.settings.fraud.verify_fingerprint_retention_s * 1000))
    status, again = await cl.put("verify", "carol", wav_file("1688_test1"), enable_pad="true")
    assert status == 200 and again.get("pad_detected") == {"type": "TypeA"}, again


# -- item 8: one consent rule ----------------------------------------------------------------
async def test_register_needs_consent_after_an_opt_out_through_either_api(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    status, body = await cl.put("register", "dora", wav_file("1688_enrol0"))
    assert status == 200, body
    tok = await gw.token("consent-1")
    status, _ = await gw.call("POST", "/users/optout", tok, json={"user_id": "dora"})
    assert status == 200
    status, body = await cl.put("register", "dora", wav_file("1688_enrol0"))
    assert_error(status, body, 409, "USER_OPTED_OUT", "register")
    assert "opt_in=true" in body["error"]["text"], body
    reply = await _ws(gw, cl, "register", wav_file("1688_enrol0"), user_id="dora")
    assert (reply["code"], reply["vbgw_code"]) == (50, "USER_OPTED_OUT"), reply
    status, body = await cl.put("register", "dora", wav_file("1688_enrol0"), opt_in="true")
    assert status == 200, body
    status, info = await gw.call("GET", "/users/info/dora", tok)
    assert info["status"] == "ENROLLED" and info["opt_in_ts"], info
    # An Aculab delete is the same opt-out; an OCP opt-in is consent for a later register.
    status, body = await cl.call("POST", "delete", params={"user_id": "dora"})
    assert status == 200, body
    assert_error(*await cl.put("register", "dora", wav_file("1688_enrol0")), 409, "USER_OPTED_OUT", "register")
    status, _ = await gw.call("POST", "/users/optin", tok, json={"user_id": "dora"})
    assert status == 200
    status, body = await cl.put("register", "dora", wav_file("1688_enrol0"))
    assert status == 200, body


# -- item 9: messages, Allow, the one-time URL ----------------------------------------------------
async def test_messages_are_clear_and_name_only_what_the_client_named(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    speech = pcm("1688_test1")
    header = wav_bytes(speech[:8000])[:44]
    zero_rate = header[:24] + b"\0\0\0\0" + header[28:] + b"\0" * 100          # sample rate 0
    zero_channels = header[:22] + b"\0\0" + header[24:] + b"\0" * 100           # no channel
    for junk in (b"RIFF....not really a wav file", b"\0" * 300, header, header[:20], b"RIFF" + b"\xff" * 60,
                 wav_bytes(speech[:8000])[:60] + b"\xff" * 10, zero_rate, zero_channels):
        status, body = await cl.put("register", "eve", junk)
        text = body["error"]["text"]
        assert status in (400, 415, 422) and "BytesIO" not in text and " 0x" not in text, body
    silent = wav_bytes(np.zeros(16000, np.int16))
    status, body = await cl.put("verify", "eve", silent)
    status, body = await cl.put("register", "eve", silent)
    assert_insufficient_speech(status, body, "register")
    assert "Source1" not in body["error"]["text"], body
    reply = await _ws(gw, cl, "register", silent, user_id="eve")
    assert reply["vbgw_code"] == "LOW_DATA" and "Source1" not in reply["message"], reply
    # a named part is still named
    status, body = await cl.call("POST", "register", params={"user_id": "eve"}, data=sources(("Source2", silent)))
    assert "Source2" in body["error"]["text"], body

    long = wav_bytes(np.tile(speech, 60 * 8000 // len(speech) + 1)[:60 * 8000 + 80])     # 60.01 s
    status, body = await cl.put("register", "eve", long)
    assert_error(status, body, 415, "AUDIO_TOO_LONG", "register")
    assert "60.01 s" in body["error"]["text"], body

    for bad in ("nan", "inf", "-inf"):
        status, body = await cl.put("verify", "eve", wav_file("1688_test1"), sensitivity=bad)
        assert_error(status, body, 400, "BAD_PARAMETER", "verify")
        text = body["error"]["text"]
        assert "sensitivity" in text and "less than" not in text and "greater than" not in text, body
        assert "-10.0 to 10.0" in text, body

    for method, action, allow in (("DELETE", "register", "GET, POST, PUT"), ("PUT", "stats", "GET, POST"),
                                  ("PATCH", "exists", "GET, POST"), ("DELETE", "delete", "GET, POST")):
        r = await gw.http.request(method, f"{gw.url}/voice_biometrics/v1/user/{action}", params={"user_id": "x"},
                                  headers={"Authorization": cl.auth})
        assert r.status == 405 and r.headers.get("Allow") == allow, (method, action, dict(r.headers))
    r = await gw.http.post(f"{gw.url}/voice_biometrics/v1/wss/register", params={"auth_token": "x"})
    assert r.status == 405 and r.headers.get("Allow") == "GET", dict(r.headers)
    r = await gw.http.put(f"{gw.url}/application_status", headers={"Authorization": cl.auth})
    assert r.status == 405 and r.headers.get("Allow") == "GET, POST", dict(r.headers)

    # A plain GET (no upgrade) on a one-time URL does not use it up.
    status, got = await cl.call("GET", "register", params={"user_id": "eve"})
    status, body = await gw.call("GET", URL(got["url"]).path_qs)
    assert_error(status, body, 400, "WEBSOCKET_REQUIRED", "register")
    async with gw.http.ws_connect(got["url"]) as ws:
        await ws.send_bytes(silent)
        await ws.send_json({"event": "audio_sent"})
        reply = await ws.receive_json()
    assert reply["vbgw_code"] == "LOW_DATA", reply          # the URL still worked


def test_durations_are_never_rounded_to_the_limit():
    from gateway.services.uploads import seconds_text
    assert seconds_text(60.01) == "60.01 s" and seconds_text(60.0001) == "60.001 s" and seconds_text(12.5) == "12.5 s"
    assert seconds_text(1800.0) == "1800 s" and seconds_text(0.0) == "0 s"
