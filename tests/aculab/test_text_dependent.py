"""Issue #16 item 2: text-dependent verification through the Aculab Users API. With the
default text_dependent=true, verify checks the registered passphrase AND the voice
(docs/passphrase.md); false is the voice alone. Real speech: FSDD digits (tests/data/fsdd),
george registering the passphrase 3-5-8 with three utterances."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import soundfile as sf

from aculab_support import Client, assert_error, assert_insufficient_speech, sources, user_group_key, wav_bytes

FSDD = Path(__file__).resolve().parents[1] / "data" / "fsdd"
GAP = np.zeros(800, np.int16)                 # 100 ms between digits


def phrase(digits: str, speaker: str, index: int) -> bytes:
    """One utterance of a digit passphrase: the speaker's FSDD recordings of the digits (8 kHz
    16-bit mono, as published), joined with short pauses, as a WAV file."""
    parts: list[np.ndarray] = []
    for d in digits:
        data, rate = sf.read(FSDD / f"{d}_{speaker}_{index}.wav", dtype="int16")
        assert rate == 8000
        parts += [data, GAP]
    return wav_bytes(np.concatenate([GAP, *parts]))


async def registered(gw, user: str = "george") -> Client:
    cl = Client(gw, await user_group_key(gw))
    status, reg = await cl.call("POST", "register", params={"user_id": user},
                                data=sources(*((f"Source{k + 1}", phrase("358", "george", k)) for k in range(3))))
    assert status == 200, reg
    assert [s["accepted"] for s in reg["sources"]] == [True, True, True]
    return cl


async def test_text_dependent_verify_needs_the_right_speaker_and_the_right_phrase(gateway):
    cl = await registered(gateway)
    status, right = await cl.put("verify", "george", phrase("358", "george", 30))
    assert status == 200, right
    assert right["verified"] is True and right["confidence"] >= 1.0, right
    # The right voice saying another phrase: the voice alone would verify it, the phrase does not.
    status, wrong_phrase = await cl.put("verify", "george", phrase("162", "george", 30))
    assert status == 200 and wrong_phrase["verified"] is False and wrong_phrase["confidence"] < 1.0, wrong_phrase
    status, voice_only = await cl.put("verify", "george", phrase("162", "george", 30), text_dependent="false")
    assert status == 200 and voice_only["verified"] is True, voice_only
    # Another speaker saying the passphrase.
    status, impostor = await cl.put("verify", "george", phrase("358", "lucas", 30))
    assert status == 200 and impostor["verified"] is False and impostor["confidence"] < 1.0, impostor
    # confidence = min(voice, content): never above the voice's own confidence
    status, right_voice = await cl.put("verify", "george", phrase("358", "george", 30), text_dependent="false")
    assert right["confidence"] <= right_voice["confidence"], (right, right_voice)


async def test_passphrase_templates_are_sealed_updated_and_purged(gateway):
    gw = gateway
    cl = await registered(gw)
    db = sqlite3.connect(gw.settings.sqlite_path)
    try:
        (blob, key_id), = db.execute("SELECT p.model, p.key_id FROM passphrases p JOIN users u ON u.row_id=p.user_row"
                                     " WHERE u.user_id='george'").fetchall()
        assert key_id is not None and not bytes(blob).startswith(b"VBPP")       # sealed like voiceprints
        status, upd = await cl.put("update", "george", phrase("358", "george", 30))
        assert status == 200, upd
        (updated,), = db.execute("SELECT updated_ms >= created_ms FROM passphrases").fetchall()
        assert updated
        status, again = await cl.put("verify", "george", phrase("358", "george", 30))
        assert status == 200 and again["verified"] is True, again
        status, gone = await cl.call("GET", "delete", params={"user_id": "george"})
        assert status == 200, gone
        assert db.execute("SELECT count(*) FROM passphrases").fetchone() == (0,)
    finally:
        db.close()


async def test_no_phrase_and_no_templates(gateway):
    gw = gateway
    cl = await registered(gw)
    # silence only: too little speech for the phrase, in the document's error
    status, body = await cl.put("verify", "george", wav_bytes(np.zeros(16000, np.int16)))
    assert_insufficient_speech(status, body, "verify")
    # A user registered without templates (e.g. through OCP before this feature) cannot be
    # verified text dependently: fail closed, asking for an update.
    db = sqlite3.connect(gw.settings.sqlite_path)
    try:
        db.execute("DELETE FROM passphrases")
        db.commit()
    finally:
        db.close()
    assert_error(*await cl.put("verify", "george", phrase("358", "george", 30)), 409, "NO_PASSPHRASE", "verify")
    status, body = await cl.put("verify", "george", phrase("358", "george", 30), text_dependent="false")
    assert status == 200 and body["verified"] is True, body
    status, upd = await cl.put("update", "george", phrase("358", "george", 30))
    assert status == 200, upd
    status, body = await cl.put("verify", "george", phrase("358", "george", 30))
    assert status == 200 and body["verified"] is True, body


async def test_text_dependent_on_the_one_time_websocket(gateway):
    cl = await registered(gateway)
    for audio, want in ((phrase("358", "george", 30), True), (phrase("162", "george", 30), False)):
        status, got = await cl.call("GET", "verify", params={"user_id": "george"})     # text_dependent: default true
        assert status == 200, got
        async with gateway.http.ws_connect(got["url"]) as ws:
            await ws.send_bytes(audio)
            await ws.send_json({"event": "audio_sent"})
            reply = await ws.receive_json()
        assert reply["event"] == "verify" and reply["verified"] is want, reply
