"""The direct stream under bad input: each mistake gets a clear error and close code, and
never disturbs another dialog streaming at the same time."""
from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
import websockets

from support import protocol_audio, read_mulaw_bytes


async def _expect_error(ws, code: str, close_code: int):
    msg = json.loads(await ws.recv())
    assert msg["error"]["code"] == code, msg
    assert msg["error"]["message"]
    with pytest.raises(websockets.ConnectionClosed) as exc:
        await ws.recv()
    assert exc.value.rcvd.code == close_code


def _cfg(dialog, encoding="l16", rate=8000):
    return json.dumps({"encoding": encoding, "sample_rate": rate, "dialog_id": dialog})


async def test_bad_inputs_close_cleanly_and_other_dialogs_continue(gateway):
    gw = gateway
    good_tok = await gw.token("good-call")
    payload = read_mulaw_bytes(protocol_audio("ls-other-tel", "1688_test0"))

    async def good_stream():
        return await gw.stream(good_tok, "good-call", payload, frame_bytes=800)

    good = asyncio.create_task(good_stream())
    url = gw.ws_url + "/agent-vb-mw/stream?token="

    cases = [
        ([b"\x00\x01"], "AUDIO_BEFORE_CONFIG", 1008),
        (["not json"], "BAD_CONFIG", 1007),
        ([json.dumps({"encoding": "opus", "sample_rate": 8000, "dialog_id": "d"})], "BAD_CONFIG", 1007),
        (["{cfg}", "{cfg}"], "CONFIG_REPEATED", 1008),
        (["{cfg}", "@@not-base64@@"], "BAD_BASE64", 1007),
        (["{cfg}", b"\x00\x01\x02"], "ODD_LENGTH", 1007),
        (["{cfg}", b"\x00" * 70000], "FRAME_TOO_LARGE", 1009),
        ([_cfg("someone-else")], "DIALOG_MISMATCH", 1008),
        ([_cfg("x", rate=12345)], "BAD_SAMPLE_RATE", 1003),
    ]
    for i, (msgs, code, close_code) in enumerate(cases):
        dialog = f"bad-{i}"
        tok = await gw.token(dialog)
        async with websockets.connect(url + tok, max_size=None) as ws:
            started = False
            for m in msgs:
                if m == "{cfg}":
                    m = _cfg(dialog)
                await ws.send(m)
                if not started and isinstance(m, str) and m.startswith("{") and m == _cfg(dialog):
                    assert json.loads(await ws.recv())["event"] == "session_started"
                    started = True
            await _expect_error(ws, code, close_code)

    msgs = await good
    assert msgs[-1]["event"] == "session_ended"
    status, res = await gw.call("GET", "/verification/ondemand", params={"users": "nobody", "token": good_tok})
    assert status == 200 and res["speech_millis"] > 2000 and res["bio_result"] == "NOT_SCORED"


async def test_base64_alaw_and_resampled_streams_are_normalised(gateway):
    gw = gateway
    import soundfile as sf
    from audioop_compat import lin2alaw
    from scipy.signal import resample_poly
    pcm8, _ = sf.read(protocol_audio("ls-other-tel", "1688_test0"), dtype="int16")
    # A-law as base64 text messages
    tok = await gw.token("alaw-call")
    async with websockets.connect(f"{gw.ws_url}/agent-vb-mw/stream?token={tok}") as ws:
        await ws.send(_cfg("alaw-call", "alaw"))
        await ws.recv()
        data = lin2alaw(pcm8)
        for i in range(0, len(data), 1600):
            await ws.send(base64.b64encode(data[i:i + 1600]).decode())
        await ws.send("")
        assert json.loads(await ws.recv())["event"] == "session_ended"
    # L16 at 16 kHz, resampled by the gateway
    pcm16 = np.clip(resample_poly(pcm8.astype(float), 2, 1), -32768, 32767).astype("<i2").tobytes()
    tok16 = await gw.token("wide-call")
    await gw.stream(tok16, "wide-call", pcm16, encoding="l16", sample_rate=16000, frame_bytes=6400)
    speech = []
    for t in (tok, tok16):
        _, r = await gw.call("GET", "/verification/ondemand", params={"users": "u1", "token": t})
        speech.append(r["speech_millis"])
    assert min(speech) > 2000
    assert abs(speech[0] - speech[1]) < 600, speech


async def test_stream_needs_a_valid_token_and_one_stream_per_dialog(gateway):
    gw = gateway
    with pytest.raises(websockets.InvalidStatus) as exc:
        async with websockets.connect(f"{gw.ws_url}/agent-vb-mw/stream?token=nope"):
            pass
    assert exc.value.response.status_code == 401
    tok = await gw.token("busy-call")
    async with websockets.connect(f"{gw.ws_url}/agent-vb-mw/stream?token={tok}") as ws1:
        await ws1.send(_cfg("busy-call"))
        await ws1.recv()
        with pytest.raises(websockets.InvalidStatus) as exc:
            async with websockets.connect(f"{gw.ws_url}/agent-vb-mw/stream?token={tok}"):
                pass
        assert exc.value.response.status_code == 409


async def test_a_fast_sender_is_slowed_down_not_dropped(gateway, engine):
    """60 s of audio sent as fast as the socket allows: backpressure keeps every sample."""
    import soundfile as sf
    from support import protocol_audio as pa
    pcm = np.concatenate([sf.read(pa("ls-other-tel", n), dtype="int16")[0]
                          for n in ("1688_enrol0", "1688_enrol1", "1998_enrol0", "1998_enrol1")])[: 8000 * 60]
    gw = gateway
    dropped_before = engine.stats().extra["dropped_audio_s"]
    tok = await gw.token("fast-call")
    await gw.stream(tok, "fast-call", pcm.astype("<i2").tobytes(), encoding="l16", frame_bytes=16000)
    _, r = await gw.call("GET", "/verification/ondemand", params={"users": "u1", "token": tok})
    whole = await engine.embed_pcm(pcm)
    assert abs(r["speech_millis"] - whole.speech_ms) <= 64, (r["speech_millis"], whole.speech_ms)
    assert engine.stats().extra["dropped_audio_s"] == dropped_before
