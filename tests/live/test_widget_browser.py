"""The agent widget in a real browser: Debian's chromium, headless, driven by playwright-core.
Speech is streamed into a live call (4x real time); the widget must show the call status, the
clean-speech progress, the live score with its band colour and EARLY/NORMAL label, be usable
with the keyboard and fit a 360 px panel. The screenshot goes to the test's temporary
directory, and to docs/agent-widget.png when that file is missing or VBGW_UPDATE_SCREENSHOT=1
(so a test run does not rewrite a tracked file)."""
from __future__ import annotations

import os
import shutil

from gateway.appkeys import CORE
from live_helpers import NodeScript, chromium_or_skip, enrol, node_or_skip, paced_stream, speech

DOCS_SHOT = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "agent-widget.png")


async def test_widget_shows_the_live_score_and_band(gateway, tmp_path):
    browser = chromium_or_skip()
    node = node_or_skip()
    gw = gateway
    user = await enrol(gw)
    tok = await gw.token("widget-1")
    status, body = await gw.call("GET", "/agent", params={"token": "not-a-token"})
    assert status == 401
    shot = tmp_path / "agent-widget.png"
    script = NodeScript(node, "widget.js", f"{gw.url}/agent?token={tok}&users={user}", str(shot), str(browser))
    await script.start(timeout=60)
    await paced_stream(gw, tok, "widget-1", speech("1688_enrol1"), speed=4.0)
    # Fraud signals, as the fraud-signal detectors will publish them (docs/live-results.md).
    core = gw.app[CORE]
    key = next(k for k in core.dialogs._dialogs if k[1] == "widget-1")
    core.bus.publish(key, "tts", {"label": "TTS_Detected", "detectionScore": 0.98})
    core.bus.publish(key, "blocklist", {"results": [{
        "label": "MATCH", "status": "CHECKED", "risk_level": "HIGH_RISK",
        "custom_agent_message": "Blocklisted voice has been detected", "custom_ui_message": "blocklisted"}]})
    out = await script.result(timeout=90)
    assert out["ok"], out
    assert out["console"] == [], out["console"]
    state = out["state"]
    assert state["status"] == "CALL_CLOSED" and state["kind"] == "NORMAL" and state["band"].startswith("TRUE_")
    assert state["score"].endswith("%") and state["label"].startswith("Match")
    assert state["scoreColor"] not in ("rgb(69, 90, 100)", "")          # a band colour, not the neutral grey
    assert state["enrolOk"] and state["scrollWidth"] <= 360
    assert out["focus"] == ["user-id", "verify-btn", "enrol-btn"]
    assert any("Blocklisted voice has been detected" in a and "HIGH RISK" in a for a in out["alerts"]), out["alerts"]
    assert any("Synthetic voice" in a and "0.98" in a for a in out["alerts"]), out["alerts"]
    # The enrol and verify buttons, with the keyboard, through the REST API.
    assert out["enrolMessage"] == "Enrolled cust-widget.", out
    assert out["verified"].startswith("TRUE_"), out
    assert shot.stat().st_size > 5000
    if not os.path.exists(DOCS_SHOT) or os.environ.get("VBGW_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS_SHOT)
