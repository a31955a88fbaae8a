"""The agent widget in a real browser: Debian's chromium, headless, driven step by step by
playwright-core (tests/live/node/browser.js) while real speech streams into live calls. Each
state an agent can meet is reached the way it happens on a call and checked for what it must
say (issue #11, items 8-10): provisional vs final, what the score means, what to do now, a
speaker change overriding a match, a closed call, an automatic verification the panel never
asked for, synthetic voice and blocklist alerts (and no alarm on genuine calls), no customer
audio, and a bad or expired session. Screenshots go to the test's temporary directory, and to
docs/agent-widget-*.png when those files are missing or VBGW_UPDATE_SCREENSHOT=1 (a test run
never rewrites a tracked file otherwise)."""
from __future__ import annotations

import io
import os
import sqlite3
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import soundfile as sf

from connectors.codecs import encode_mulaw
from gateway.web.appkeys import SERVICES
from audiohook.audiohook_support import org_for          # tests/audiohook, by its path under tests/
from live_support import Browser, LiveCall, chromium_or_skip, enrol, node_or_skip, speech
from support import dialog_named, protocol_audio

DOCS = Path(__file__).resolve().parents[2] / "docs"
TTS_CLIP = Path(__file__).resolve().parents[1] / "fraud" / "data" / "tts-espeak.wav"
WHITE = "rgb(255, 255, 255)"


async def keep_shot(b: Browser, page: str, tmp_path: Path, name: str) -> None:
    """Screenshot the panel; copy it to docs/<name> (64 colours, a few kB) when asked to."""
    shot = tmp_path / name
    size = await b.do("shot", page=page, path=str(shot), selector="main")
    assert size > 3000
    dest = DOCS / name
    if not dest.exists() or os.environ.get("VBGW_UPDATE_SCREENSHOT") == "1":
        from PIL import Image
        Image.open(shot).convert("RGB").quantize(colors=64).save(dest, optimize=True)


def speech_pcm(name: str) -> np.ndarray:
    data, rate = sf.read(protocol_audio("ls-other-tel", name), dtype="int16")
    assert rate == 8000
    return data


def wav(name: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, speech_pcm(name), 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def tts_labels(gw, dialog_id: str) -> list[str]:
    core = gw.app[SERVICES]
    return [m.payload.label for m in core.bus.recent(dialog_named(core, dialog_id).key) if m.kind == "tts"]


async def test_a_live_call_provisional_final_and_speaker_change(gateway, tmp_path):
    chromium, node = chromium_or_skip(), node_or_skip()
    gw = gateway
    user = await enrol(gw)
    tok = await gw.token("widget-1")
    caller = speech("1688_enrol1")
    async with Browser(node, chromium) as b:
        assert await b.do("open", page="w", url=f"{gw.url}/agent?token={tok}&users={user}") == 200
        await b.wait("w", '#score[data-state="starting"]')
        st = await b.widget("w")
        assert st["status"] == "CALL_OPENED" and st["verdict"] == f"Verifying {user}…", st
        async with LiveCall(gw, tok, "widget-1") as call:
            # 4 s of the caller: an EARLY result. Provisional: an outline, never a solid colour.
            await call.send(caller[:8000 * 4])
            await b.wait("w", '#score[data-state="provisional"]')
            st = await b.widget("w")
            assert st["band"].startswith("TRUE_") and st["verdict"] == f"Likely {user}", st
            assert st["background"] == WHITE and st["borderStyle"] == "dashed", st
            assert "Early result" in st["detail"] and "final result comes at 5.0 s" in st["detail"], st
            assert st["advice"] == "Do not act on this yet: keep the caller talking."
            assert st["scoreText"].startswith("Voice score ") and st["explained"], st
            await keep_shot(b, "w", tmp_path, "agent-widget-provisional.png")

            # The rest of the recording: the final result, in the band's solid colour.
            await call.send(caller[8000 * 4:])
            await b.wait("w", '#score[data-state="final"][data-kind="NORMAL"]')
            st = await b.widget("w")
            assert st["band"].startswith("TRUE_") and st["verdict"] == f"Voice matches {user}", st
            assert st["background"] != WHITE and "Final result" in st["detail"], st
            assert st["advice"].startswith("Voice verified") or st["advice"].startswith("A weak match"), st
            # A genuine caller: the TTS detector said No_TTS_Detected, and nothing alarms.
            labels = tts_labels(gw, "widget-1")
            assert labels and set(labels) == {"No_TTS_Detected"}, labels
            assert st["alerts"] == [], st["alerts"]
            assert st["scrollWidth"] <= 360, st
            await keep_shot(b, "w", tmp_path, "agent-widget-final.png")
            assert await b.do("tabs", page="w", n=3) == ["user-id", "verify-btn", "enrol-btn"]

            # Another speaker takes over for 30 s: the match above no longer holds.
            await call.send(speech("1998_enrol0") + speech("1998_enrol1"))
            await b.wait("w", '#score[data-state="warning"]', timeout=60)
            st = await b.widget("w")
            assert st["verdict"] == "Check the caller: the voice changed", st
            assert f"Earlier results matched {user}" in st["detail"] and "may not be the person" in st["detail"]
            assert st["scoreText"] is None, st                 # no number beside the warning
            assert st["advice"] == "Verify the person you are speaking to now another way."
            assert [a["id"] for a in st["alerts"]] == ["alert-speaker"], st["alerts"]
            await call.end()
        await b.wait("w", '#call-status[data-status="CALL_CLOSED"]')
        st = await b.widget("w")
        assert st["state"] == "warning" and st["statusText"] == "Call ended", st    # still overrides the match
        await keep_shot(b, "w", tmp_path, "agent-widget-speaker-change.png")
        assert st["console"] == [], st["console"]


async def test_a_closed_call_verified_on_demand_with_a_blocklist_match(gateway, tmp_path):
    """Verify pressed after the call: the message says what the result is (before: "Verified
    cust-1688" for a 1 % score). The blocklist alert comes with the panel's catch-up."""
    chromium, node = chromium_or_skip(), node_or_skip()
    gw = gateway
    user = await enrol(gw)
    status, bl = await gw.call("POST", "/api/blocklists", gw.pat, json={
        "name": "known", "risk_level": "HIGH_RISK", "custom_ui_message": "blocklisted",
        "custom_agent_message": "Blocklisted voice: transfer to the fraud team"})
    assert status == 201, bl
    form = aiohttp.FormData()
    form.add_field("label", "fraudster-1998")
    form.add_field("file", wav("1998_enrol1"), filename="f.wav", content_type="audio/wav")
    status, entry = await gw.call("POST", f"/api/blocklists/{bl['id']}/fraudsters", gw.pat, data=form)
    assert status == 201, entry
    tok = await gw.token("widget-2")
    await gw.stream(tok, "widget-2", speech("1998_enrol0"))          # another caller claims to be the user
    async with Browser(node, chromium) as b:
        await b.do("open", page="w", url=f"{gw.url}/agent?token={tok}")
        await b.wait("w", '#call-status[data-status="CALL_CLOSED"]')
        await b.wait("w", "#alert-blocklist-0")
        st = await b.widget("w")
        assert st["state"] == "idle" and st["verdict"] == "No verification yet", st
        assert st["enrolOk"] and st["speech"].endswith("of clean speech"), st       # 15 s of the caller
        assert "HIGH RISK" in st["alerts"][0]["text"] and "transfer to the fraud team" in st["alerts"][0]["text"]
        await b.do("focus", page="w", selector="#user-id")
        await b.do("type", page="w", text=user)
        await b.do("press", page="w", key="Enter")
        # The on-demand answer shows first; the push verification it starts may replace it
        # with the call's NORMAL at once (the call is over): either is the final verdict.
        await b.wait("w", f'#score[data-user="{user}"]')
        st = await b.widget("w")
        assert st["kind"] in ("ON-DEMAND", "NORMAL"), st
        assert st["state"] == "final" and st["band"].startswith("FALSE_"), st
        assert st["verdict"] == f"Voice does not match {user}" and "call ended" in st["detail"], st
        assert st["message"] == f"{user}: the voice does not match (the call has ended: result from all its speech).", st
        assert "Verified" not in st["message"] and st["advice"].startswith("Not the enrolled voice"), st
        await keep_shot(b, "w", tmp_path, "agent-widget-no-match.png")
        # Enrol, with the keyboard: the call had 15 s of this caller.
        await b.do("focus", page="w", selector="#user-id")
        await b.do("press", page="w", key="Control+A")
        await b.do("type", page="w", text="cust-widget")
        await b.do("press", page="w", key="Tab")
        await b.do("press", page="w", key="Tab")
        await b.do("press", page="w", key="Enter")
        await b.do("text", page="w", selector="#message", pattern="enrolled |fail|error|speech")
        assert (await b.widget("w"))["message"] == "Enrolled cust-widget."
        assert (await b.widget("w"))["console"] == []


async def test_automatic_verification_synthetic_voice_and_unavailable_states(gateway, tmp_path):
    """A panel opened without &users= shows the AudioHook call's automatic verification (from
    the caller's ANI); a synthetic voice raises the TTS alert; a call streaming no customer
    audio, a bad token and a session that expires mid-call each say what to do."""
    chromium, node = chromium_or_skip(), node_or_skip()
    gw = gateway
    tok_e = await gw.token("enrol-a", custom={"Ani": "5551688"})
    await gw.stream(tok_e, "enrol-a", speech("1688_enrol0"))
    assert (await gw.call("POST", "/enrol", tok_e, json={"user_id": "cust-a"}))[0] == 200
    org = await org_for(gw)
    conv = str(uuid.uuid4())
    tok = await gw.token(conv)
    caller = np.concatenate([speech_pcm(f"1688_test{i}") for i in (1, 2, 3)])
    async with Browser(node, chromium) as b:
        await b.do("open", page="auto", url=f"{gw.url}/agent?token={tok}")
        await b.wait("auto", '#score[data-state="idle"]')
        rep = await org.run(caller, None, conversation_id=conv, ani="tel:555-1688")
        assert rep.ok, rep.summary()
        await b.wait("auto", '#score[data-state="final"][data-user="cust-a"]')
        st = await b.widget("auto")
        assert st["verdict"] == "Voice matches cust-a" and st["band"].startswith("TRUE_"), st
        await keep_shot(b, "auto", tmp_path, "agent-widget-automatic.png")

        # Synthetic speech on a direct stream: the TTS alert (a real detector verdict).
        tok_t = await gw.token("widget-tts")
        await b.do("open", page="tts", url=f"{gw.url}/agent?token={tok_t}")
        await b.wait("tts", '#call-status[data-status="CALL_OPENED"]')
        clip, _ = sf.read(TTS_CLIP, dtype="int16")
        await gw.stream(tok_t, "widget-tts", encode_mulaw(np.concatenate([clip, clip])))
        await b.wait("tts", "#alert-tts")
        assert "TTS_Detected" in tts_labels(gw, "widget-tts")
        st = await b.widget("tts")
        assert st["alerts"][0]["text"].startswith("Synthetic voice suspected"), st

        # The agent side alone (AudioHook `internal`): nothing to score, and the panel says so.
        conv2 = str(uuid.uuid4())
        tok2 = await gw.token(conv2)
        await b.do("open", page="agent-only", url=f"{gw.url}/agent?token={tok2}&users=cust-a")
        await b.wait("agent-only", '#score[data-state="starting"]')
        internal = {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}
        rep = await org.run(np.zeros(8000, np.int16), caller, conversation_id=conv2, offers=[internal])
        assert rep.ok, rep.summary()
        await b.wait("agent-only", '#score[data-state="unavailable"]')
        st = await b.widget("agent-only")
        assert st["verdict"] == "No customer audio on this call", st
        assert st["advice"].startswith("Verify the caller another way"), st
        await keep_shot(b, "agent-only", tmp_path, "agent-widget-no-customer-audio.png")

        # A bad token: a page that says what to do, never raw JSON.
        assert await b.do("open", page="bad", url=f"{gw.url}/agent?token=not-a-token") == 401
        st = await b.widget("bad")
        assert st["notice"] == "This panel's session is not valid.", st
        await keep_shot(b, "bad", tmp_path, "agent-widget-bad-token.png")
        # A session that expires while the panel is open: the next action says so.
        db = sqlite3.connect(gw.settings.sqlite_path)
        db.execute("UPDATE sessions SET last_used_ms = last_used_ms - ?", ((gw.settings.auth.token_idle_s + 60) * 1000,))
        db.commit()
        db.close()
        await b.do("focus", page="auto", selector="#user-id")
        await b.do("type", page="auto", text="cust-a")
        await b.do("press", page="auto", key="Enter")
        await b.wait("auto", '#call-status[data-status="EXPIRED"]')
        st = await b.widget("auto")
        assert st["verdict"] == "Session expired" and st["buttonsDisabled"], st
        assert "Close the panel and open it again from the call" in st["notice"], st
        await keep_shot(b, "auto", tmp_path, "agent-widget-session-expired.png")
        assert st["console"] == [] or all("401" in c for c in st["console"]), st["console"]
