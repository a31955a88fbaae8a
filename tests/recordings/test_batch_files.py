"""POST /api/enroll with a recording file, through a real HTTP client against a real gateway:
a stereo WAV (Genesys: customer left) and a stereo AAC .mp4 (NICE: customer right) made from
real speech; the caller then verifies TRUE_* on a live call over the direct stream, and the
agent who was on the other channel (so never enrolled) and an impostor get FALSE_*."""
from __future__ import annotations

import aiohttp
import numpy as np
import pytest

from recording_audio import (AGENT, CALLER, IMPOSTOR, mp4_bytes, mulaw_of, speech, stereo_call, two_channels,
                             wav_bytes)


def multipart(fields: dict[str, str], file: tuple[bytes, str] | None = None) -> aiohttp.MultipartWriter:
    """multipart/form-data as curl -F sends it (also with no file part)."""
    mp = aiohttp.MultipartWriter("form-data")
    for k, v in fields.items():
        mp.append(v, {"Content-Type": "text/plain"}).set_content_disposition("form-data", name=k)
    if file is not None:
        mp.append(file[0], {"Content-Type": "application/octet-stream"}).set_content_disposition(
            "form-data", name="file", filename=file[1])
    return mp


async def enroll(gw, file: tuple[bytes, str] | None, token: str | None = None, pat: str | None = None,
                 **fields: str):
    """POST /api/enroll: with the PAT (tenant_id/profile_id acme/retail unless given) or a session token."""
    base = {"tenant_id": "acme", "profile_id": "retail"} if token is None else {}
    return await gw.call("POST", "/api/enroll", token or pat or gw.pat, data=multipart({**base, **fields}, file))


async def live_result(gw, call_id: str, user_id: str, speaker: str) -> dict:
    """A live call of `speaker` over the direct stream, then the on-demand result for user_id."""
    tok = await gw.token(call_id)
    await gw.stream(tok, call_id, mulaw_of(speech(f"{speaker}_test1", f"{speaker}_test2")))
    return await gw.ondemand(tok, user_id)


async def assert_caller_verifies(gw, user_id: str) -> None:
    genuine = await live_result(gw, f"live-{user_id}", user_id, CALLER)
    assert genuine["bio_result"].startswith("TRUE_"), genuine
    agent = await live_result(gw, f"agent-{user_id}", user_id, AGENT)
    assert agent["bio_result"].startswith("FALSE_"), ("the agent's channel was enrolled", agent)
    impostor = await live_result(gw, f"impostor-{user_id}", user_id, IMPOSTOR)
    assert impostor["bio_result"].startswith("FALSE_"), impostor


async def test_stereo_wav_from_genesys_enrols_the_customer_channel(gateway):
    gw = gateway
    wav = wav_bytes(stereo_call(customer_side=0), 8000)               # Genesys map: customer left
    status, body = await enroll(gw, (wav, "conversation.wav"), ccaas_provider="GENESYS",
                                **{"biokeys[user_id]": "caller-wav", "biokeys[Ani]": "+15550001"})
    assert status == 200 and body["user_id"] == "caller-wav" and body["speech_millis"] >= 10000, body
    await assert_caller_verifies(gw, "caller-wav")


async def test_stereo_mp4_from_nice_enrols_the_customer_channel(gateway):
    gw = gateway
    mp4 = mp4_bytes(stereo_call(customer_side=1, rate=16000), 16000)   # NICE map: agent left, customer right
    status, body = await enroll(gw, (mp4, "recording.mp4"), ccaas_provider="NICE_IN_CONTACT",
                                ccaas_session_id="471348707611",
                                **{"biokeys[user_id]": "caller-mp4", "biokeys[Ani]": "+15550002"})
    assert status == 200 and body["speech_millis"] >= 10000, body
    await assert_caller_verifies(gw, "caller-mp4")
    # the kept enrolment audio is the customer's channel at 8 kHz, on disk beside the voiceprint
    import soundfile as sf
    kept = list((gw.settings.data_dir / "audio").rglob("*.wav"))
    assert len(kept) == 1 and sf.info(kept[0]).samplerate == 8000 and sf.info(kept[0]).channels == 1


SILENT_AGENT = np.zeros(8000 * 15, np.int16)


@pytest.mark.parametrize("make,name", [
    (lambda: wav_bytes(stereo_call(1, SILENT_AGENT), 8000, "ULAW"), "ulaw.wav"),
    (lambda: wav_bytes(stereo_call(1, SILENT_AGENT), 8000, "ALAW"), "alaw.wav"),
    (lambda: wav_bytes(stereo_call(1, np.zeros(44100 * 15, np.int16), 44100), 44100, "PCM_16", "WAVEX"), "x.wav"),
    (lambda: wav_bytes(stereo_call(1, np.zeros(96000 * 15, np.int16), 96000), 96000, "PCM_24"), "hi.wav"),
    (lambda: mp4_bytes(stereo_call(1, np.zeros(22050 * 15, np.int16), 22050), 22050, container="ipod"), "a.m4a"),
])
async def test_recording_formats_enrol_from_the_customer_channel(gateway, make, name):
    """The agent's channel is silent: had it been picked, there would be no speech (422)."""
    gw = gateway
    status, body = await enroll(gw, (make(), name), ccaas_provider="NICE_IN_CONTACT",
                                **{"biokeys[user_id]": "fmt-user"})
    assert status == 200 and body["speech_millis"] >= 10000, body


async def test_each_provider_has_its_own_channel_map(gateway):
    """The same file, customer right and silence left: NICE's map finds the caller, Genesys's
    (customer left) finds no speech, and so does a session token whose call is Genesys."""
    gw = gateway
    wav = wav_bytes(stereo_call(1, SILENT_AGENT), 8000)
    status, body = await enroll(gw, (wav, "r.wav"), ccaas_provider="GENESYS", **{"biokeys[user_id]": "mapped"})
    assert status == 422 and body["error"]["code"] == "LOW_DATA", body
    tok = await gw.token("map-call")                         # its ccaasProvider is GENESYS
    status, body = await enroll(gw, (wav, "r.wav"), tok, **{"biokeys[user_id]": "mapped"})
    assert status == 422 and body["error"]["code"] == "LOW_DATA", body
    status, body = await enroll(gw, (wav, "r.wav"), tok, ccaas_provider="NICE", **{"biokeys[user_id]": "mapped"})
    assert status == 200, body


async def test_bad_recordings_get_stable_codes_and_enrol_nothing(gateway):
    gw = gateway
    caller = speech(f"{CALLER}_enrol0")
    three = np.stack([caller, caller, caller], axis=1)
    long_silence = np.zeros((8000 * 70, 2), np.int16)                 # uploads.max_audio_s is 60 here
    cases = [((wav_bytes(three, 8000), "3ch.wav"), 415, "UNSUPPORTED_CHANNEL_LAYOUT"),
             ((mp4_bytes(three, 8000), "3ch.mp4"), 415, "UNSUPPORTED_CHANNEL_LAYOUT"),
             ((mp4_bytes(long_silence, 8000), "long.mp4"), 413, "AUDIO_TOO_LONG"),
             ((mp4_bytes(two_channels(caller, caller), 48000, codec="ac3"), "ac3.mp4"), 415, "UNSUPPORTED_MEDIA"),
             ((b"OggS" + b"\0" * 100, "call.ogg"), 415, "UNSUPPORTED_MEDIA"),
             ((mp4_bytes(stereo_call(1), 8000)[:5000], "cut.mp4"), 415, "BAD_AUDIO"),
             ((mp4_bytes(two_channels(caller[:8000 * 3], caller[:8000 * 3]), 8000), "short.mp4"), 422, "LOW_DATA")]
    for file, want_status, code in cases:
        status, body = await enroll(gw, file, ccaas_provider="NICE_IN_CONTACT", **{"biokeys[user_id]": "bad-rec"})
        assert (status, body["error"]["code"]) == (want_status, code), (file[1], body)
        assert "Traceback" not in body["error"]["message"] and "0x" not in body["error"]["message"]
    tok = await gw.token("bad-rec-check")
    assert (await gw.call("GET", "/users/info/bad-rec", tok))[1]["status"] == "NOT_ENROLLED"
    assert not list((gw.settings.data_dir / "audio").rglob("*.wav"))            # no audio left behind
    status, body = await enroll(gw, (wav_bytes(stereo_call(1), 8000), "x.wav"), ccaas_provider="NICE")
    assert (status, body["error"]["code"]) == (400, "USER_ID_REQUIRED")
