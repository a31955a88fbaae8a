"""HTTP message signature verification (connectors/audiohook_signature.py), unit level."""
from __future__ import annotations

import pytest
from multidict import CIMultiDict

from connectors.audiohook_signature import (
    NonceCache, SignatureError, VerifyPolicy, authority_of, decode_secret, sign, verify,
)

KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
SECRET = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="
ORG, SID, CORR = ("d7934305-0972-4844-938e-9060eef73d05", "30b0e395-84d3-4570-ac13-9a62d8f514c0",
                  "e160e428-53e2-487c-977d-96989bf5c99d")
T = 1641013200


def request(created=T, nonce="VGhpc0lzQVVuaXF1ZU5vbmNl", secret=SECRET, expires_in=30, **over) -> CIMultiDict:
    h = CIMultiDict({"Audiohook-Organization-Id": ORG, "Audiohook-Session-Id": SID,
                     "Audiohook-Correlation-Id": CORR, "X-API-KEY": KEY})
    h.update(sign(request_target="/api/v1/voicebiometrics/ws", authority="audiohook.example.com", org_id=ORG,
                  session_id=SID, correlation_id=CORR, api_key=KEY, client_secret=secret, created=created,
                  nonce=nonce, expires_in=expires_in))
    for k, v in over.items():
        h[k.replace("_", "-")] = v
    return h


def check(h, now=T + 1, secret=SECRET, nonces=None, target="/api/v1/voicebiometrics/ws",
          authority="audiohook.example.com"):
    return verify(method="GET", request_target=target, authority=authority, headers=h,
                  secret=decode_secret(secret) if secret else None, policy=VerifyPolicy(), nonces=nonces, now=now)


def reason(**kw) -> str:
    with pytest.raises(SignatureError) as exc:
        check(**kw)
    return exc.value.reason


def test_documented_test_vector():
    h = request(expires_in=3282026430 - T)
    assert h["Signature"] == "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:"
    assert check(h).keyid == KEY


def test_rules():
    assert reason(h=request(secret="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")) == "bad_signature"
    assert reason(h=request(), secret=None) == "unknown_api_key"
    assert reason(h=request(), target="/other") == "bad_signature"
    assert reason(h=request(), authority="evil.example.com") == "bad_signature"
    assert reason(h=request(), now=T + 20) == "expired"                      # older than 10 s + skew
    assert reason(h=request(expires_in=1), now=T + 5) == "expired"
    assert reason(h=request(), now=T - 10) == "created_in_future"
    assert check(request(), now=T - 2)                                      # within the clock skew
    assert reason(h=request(nonce="short")) == "bad_nonce"
    h = request()
    h["X-API-KEY"] = "another-key"
    assert reason(h=h) == "keyid_mismatch"
    h = request()
    h["Audiohook-Session-Id"] = "00000000-0000-0000-0000-000000000000"      # a signed header changed
    assert reason(h=h) == "bad_signature"
    h = request()
    del h["Signature"]
    assert reason(h=h) == "unsigned"
    h = request()
    h["Signature-Input"] = h["Signature-Input"].replace(' "x-api-key"', "")
    assert reason(h=h) == "missing_component"
    h = request()
    h["Signature-Input"] = h["Signature-Input"].replace('"@authority"', '"@authority";sf')
    assert reason(h=h) == "unsupported_component"
    h = request()
    h["Signature-Input"] = h["Signature-Input"].replace("hmac-sha256", "rsa-pss-sha512")
    assert reason(h=h) == "bad_alg"
    for junk in ('sig1=("@request-target"', "sig1=(", "=", 'sig1=("a" "b");created=1.5'):
        h = request()
        h["Signature-Input"] = junk
        assert reason(h=h) == "malformed", junk


def test_nonce_cache_rejects_replay_until_expiry():
    cache = NonceCache(100)
    check(request(), nonces=cache)
    assert reason(h=request(), nonces=cache) == "replayed_nonce"
    assert len(cache) == 1
    cache.add("x" * 24, until=T + 1, now=T + 100)                          # purges expired entries
    assert len(cache) == 1
    small = NonceCache(2)
    for i in range(3):
        assert small.add(f"n{i}", T + 100, T)
    assert len(small) == 2 and small.evicted == 1


def test_authority():
    assert authority_of("Example.COM:443", True) == "example.com"
    assert authority_of("example.com:80", False) == "example.com"
    assert authority_of("127.0.0.1:3100") == "127.0.0.1:3100"
