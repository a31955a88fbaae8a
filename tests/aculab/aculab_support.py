"""Helpers for the Aculab Users API tests: user group keys from the real CLI, Basic auth,
and WAV uploads built from the in-repo protocol audio (tests/data/README.md)."""
from __future__ import annotations

import base64
import io
import re

import aiohttp
import numpy as np
import soundfile as sf

from support import admin, protocol_audio

P = "ls-other-tel"
USERS = "/voice_biometrics/v1/user"
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}:\d{2}:\d{2}$")


def key_of(output: str) -> str:
    last = output.strip().splitlines()[-1]
    assert last.startswith("key="), output
    return last[4:]


async def user_group_key(gw, tenant: str = "acme", profile: str = "retail") -> str:
    return key_of(await admin(gw.settings, "user-group-key", "--tenant", tenant, "--profile", profile))


def basic(cloud_id: str, key: str, username: str = "bob@example.com") -> str:
    """An Authorization header value: Basic cloudID/username:key."""
    return raw_basic(f"{cloud_id}/{username}", key)


def raw_basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def wav_file(name: str) -> bytes:
    """A protocol file as it is on disk: 8 kHz mono mu-law WAV."""
    return protocol_audio(P, name).read_bytes()


def wav_bytes(samples: np.ndarray, rate: int = 8000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def pcm(name: str) -> np.ndarray:
    data, rate = sf.read(protocol_audio(P, name), dtype="int16")
    assert rate == 8000
    return data


def sources(*files: tuple[str, bytes]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for part, data in files:
        form.add_field(part, data, filename=f"{part.lower()}.wav", content_type="audio/wav")
    return form


class Client:
    """One Aculab client: a cloud ID and a user group key against a running gateway."""

    def __init__(self, gw, key: str, cloud_id: str = "acme"):
        self.gw, self.key, self.auth = gw, key, basic(cloud_id, key)

    async def call(self, method: str, action: str, auth: str | None = "", **kw):
        """auth: "" this client's credentials, None none, else an Authorization header value."""
        auth = self.auth if auth == "" else auth
        if auth is not None:
            kw.setdefault("headers", {})["Authorization"] = auth
        return await self.gw.call(method, f"{USERS}/{action}", **kw)

    async def put(self, action: str, user_id: str, data: bytes, **params):
        return await self.call("PUT", action, params={"user_id": user_id, **params}, data=data)


def assert_error(status: int, body: dict, want_status: int, vbgw_code: str, action: str) -> None:
    """The seed's envelope, with vbgw's stable code."""
    assert status == want_status, body
    err, req = body["error"], body["request"]
    assert err["code"] == f"HTTP {want_status}" and err["vbgw_code"] == vbgw_code, body
    assert err["link"].endswith(f"tab-id={action}") and DATE_RE.match(err["datetime"]), body
    assert req["url"].startswith("/voice_biometrics/v1/") and DATE_RE.match(req["datetime"]), body
    assert "Traceback" not in err["text"]


def assert_insufficient_speech(status: int, body: dict, action: str) -> None:
    """The document's error for too little speech (Aculab's published Voice Biometrics
    errors): HTTP 400 carrying engine error "422" (no "HTTP" prefix), "Insufficient speaker
    observations in the audio source"; vbgw_code LOW_DATA."""
    assert status == 400, body
    err = body["error"]
    assert err["code"] == "422" and err["vbgw_code"] == "LOW_DATA", body
    assert err["text"].startswith("Insufficient speaker observations in the audio source: "), body
    assert err["link"].endswith(f"tab-id={action}") and DATE_RE.match(err["datetime"]), body
