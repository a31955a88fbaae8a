/* vbgw agent widget. Opened as /agent?token=<session token>[&users=<user id>].
   Live results come over Socket.IO (path /agent-socket/socket.io, namespace
   /agent-socket/socket); enrol and verify call the REST API with the same session token.

   What the agent sees is derived from one state object by render(), so every state has one
   look and one sentence of advice (docs/agent-widget.md lists them):
   idle · starting · waiting (not enough speech) · not-scored (not enrolled, opted out, must
   re-enrol) · provisional (EARLY: an outline, never a solid colour) · final (NORMAL or an
   on-demand result on enough speech: the band's solid colour) · warning (the voice changed:
   overrides any match) · ended (the call closed before a final result) · unavailable (no
   customer audio, session expired). */
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var token = params.get("token") || "";
  var $ = function (id) { return document.getElementById(id); };
  var cfg = { enrol_min_speech_ms: 10000, verify_min_speech_ms: 5000, early_speech_ms: 2000,
              socket_path: "/agent-socket/socket.io", socket_namespace: "/agent-socket/socket" };
  var socket = null;
  var pushUsers = "";          // users this panel asked to verify (its own request)

  var state = {
    status: "CONNECTING",
    noCustomerAudio: false,
    expired: false,
    result: null,              // {user, band, score, kind, speech, errorType}; kind STARTING|EARLY|NORMAL|ON-DEMAND
    users: "",                 // the users of the verification on screen, sorted, comma-joined
    speakerChanged: false
  };

  var STATUS_TEXT = { CONNECTING: "Connecting…", CALL_OPENED: "Call open", BIO_ACTIVE: "Listening",
                      CALL_CLOSED: "Call ended", SYSTEM_ERROR: "System error", DISCONNECTED: "Reconnecting…",
                      EXPIRED: "Session expired", NO_CUSTOMER_AUDIO: "No customer audio" };
  var STRENGTH = { HIGH: "high confidence", MEDIUM: "medium confidence", LOW: "low confidence" };
  var FINAL_ADVICE = {
    TRUE_HIGH: "Voice verified. Continue under your verification policy.",
    TRUE_MEDIUM: "Voice verified. Continue under your verification policy.",
    TRUE_LOW: "A weak match: also ask a security question before you continue.",
    FALSE_LOW: "Unclear: verify the caller another way.",
    FALSE_MEDIUM: "Not the enrolled voice: verify the caller another way before you continue.",
    FALSE_HIGH: "Not the enrolled voice: verify the caller another way and follow your fraud procedure."
  };

  function seconds(ms) { return (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + " s"; }

  function say(text, isError) {
    var m = $("message");
    m.textContent = text;
    m.className = "message" + (isError ? " error" : "");
  }

  function notice(text, level) {
    var n = $("notice");
    n.hidden = !text;
    n.textContent = text || "";
    n.dataset.level = level || "info";
  }

  function scored(r) { return !!r && /^(TRUE|FALSE)_/.test(r.band || ""); }

  // The verdict, the line under it, the advice and the box's look, for the current state.
  function view() {
    var r = state.result, closed = state.status === "CALL_CLOSED";
    if (state.expired) {
      return { state: "unavailable", verdict: "Session expired",
               kind: "This panel can no longer reach the call's results.",
               advice: "Close the panel and open it again from the call." };
    }
    if (state.noCustomerAudio) {
      return { state: "unavailable", verdict: "No customer audio on this call",
               kind: "Only the agent's side of the call is streamed to voice verification.",
               advice: "Verify the caller another way. (Admin: stream both channels of the call.)" };
    }
    if (!r) {
      return { state: "idle", verdict: "No verification yet",
               kind: closed ? "The call has ended." : "",
               advice: "Enter the customer's user id and press Verify." };
    }
    var who = r.user;
    if (r.kind === "STARTING") {
      return closed ? { state: "ended", verdict: "No result for " + who, kind: "The call has ended.",
                        advice: "Treat the caller as not verified by voice." }
                    : { state: "starting", verdict: "Verifying " + who + "…",
                        kind: "Listening for the caller's voice.",
                        advice: "Keep the caller talking: a first, provisional result comes after " +
                                seconds(cfg.early_speech_ms) + " of speech." };
    }
    if (r.band === "NOT_SCORED") {
      var why = { OPTED_OUT: [who + " opted out of voice verification", "Verify the caller another way."],
                  RE_ENROLL: [who + " must enrol again", "The voiceprint is out of date: verify another way, then enrol " +
                              "the caller again with their consent."] }[r.errorType] ||
                [who + " is not enrolled", "Verify the caller another way; with their consent, enrol them once " +
                 seconds(cfg.enrol_min_speech_ms) + " of speech are in."];
      return { state: "not-scored", verdict: why[0], kind: "Nothing to compare the voice with.", advice: why[1] };
    }
    if (!scored(r)) {          // NO_DATA, LOW_DATA
      return closed ? { state: "ended", verdict: "Not enough speech for " + who,
                        kind: "The call ended with " + seconds(r.speech || 0) + " of clean speech.",
                        advice: "Treat the caller as not verified by voice." }
                    : { state: "waiting", verdict: "Not enough speech yet",
                        kind: seconds(r.speech || 0) + " of clean speech so far.",
                        advice: "Keep the caller talking: a first result comes after " +
                                seconds(cfg.early_speech_ms) + " of speech." };
    }
    var match = r.band.indexOf("TRUE_") === 0;
    var strength = STRENGTH[r.band.split("_")[1]];
    var basis = seconds(r.speech || 0) + " of speech" + (r.mixed ? " (mixed with the agent's voice: less reliable)" : "");
    var provisional = r.kind === "EARLY" || (r.kind === "ON-DEMAND" && (r.speech || 0) < cfg.verify_min_speech_ms);
    if (state.speakerChanged) {
      // No score here: a number next to this warning would be read as a verdict on the new voice.
      return { state: "warning", verdict: "Check the caller: the voice changed",
               kind: "Earlier results " + (match ? "matched " : "did not match ") + who +
                     "; another voice has spoken since. They may not be the person speaking now.",
               advice: "Verify the person you are speaking to now another way." };
    }
    if (provisional && closed) {
      return { state: "ended", verdict: "Call ended before a final result",
               kind: "Last, provisional result: " + (match ? "likely " : "probably not ") + who + " (" + basis + ").",
               advice: "Treat the caller as not verified by voice.", score: true };
    }
    if (provisional) {
      return { state: "provisional", verdict: match ? "Likely " + who : "Probably not " + who,
               kind: "Early result from " + basis + "; the final result comes at " +
                     seconds(cfg.verify_min_speech_ms) + " of speech.",
               advice: "Do not act on this yet: keep the caller talking.", score: true };
    }
    return { state: "final",
             verdict: (match ? "Voice matches " : "Voice does not match ") + who,
             kind: (r.kind === "ON-DEMAND" ? "On-demand result" : "Final result") + " · " + strength + " · " + basis +
                   (closed ? " · call ended" : ""),
             advice: FINAL_ADVICE[r.band], score: true };
  }

  function render() {
    var v = view(), r = state.result;
    var box = $("score");
    box.dataset.state = v.state;
    box.dataset.band = (r && r.band) || "NONE";
    box.dataset.kind = (r && r.kind) || "";
    box.dataset.user = (r && r.user) || "";
    $("verdict").textContent = v.verdict;
    $("score-kind").textContent = v.kind;
    $("advice").textContent = v.advice || "";
    $("score-user").textContent = r && r.user ? "· " + r.user : "";
    var showScore = !!v.score && scored(r);
    $("meter").hidden = !showScore;
    $("explain").hidden = !showScore;
    if (showScore) {
      var n = Math.round(r.score * 100);
      $("score-value").textContent = "Voice score " + n + "/100";
      $("meter-fill").style.width = n + "%";
    }
    var pill = state.expired ? "EXPIRED" : state.noCustomerAudio && state.status !== "CALL_CLOSED" ? "NO_CUSTOMER_AUDIO"
             : state.status;
    var el = $("call-status");
    el.dataset.status = pill;
    el.textContent = STATUS_TEXT[pill] || (/^ERR_CODE/.test(pill) ? "Stream error" : pill.replace(/_/g, " "));
    $("verify-btn").disabled = $("enrol-btn").disabled = state.expired;
  }

  function setSpeech(ms, enough) {
    var max = cfg.enrol_min_speech_ms;
    var fill = $("speech-fill");
    fill.style.width = Math.min(100, (100 * ms) / max).toFixed(1) + "%";
    var verifyOk = ms >= cfg.verify_min_speech_ms;
    var enrolOk = enough || ms >= max;
    fill.className = "fill" + (enrolOk ? " enrol" : verifyOk ? " verify" : "");
    $("speech-text").textContent = seconds(ms) + " of clean speech";
    $("verify-ok").hidden = !verifyOk;
    $("enrol-ok").hidden = !enrolOk;
    var bar = $("speech-bar");
    bar.setAttribute("aria-valuenow", String(Math.min(ms, max)));
    bar.setAttribute("aria-valuetext", seconds(ms) + " of clean speech; verify at " + seconds(cfg.verify_min_speech_ms) +
                     ", enrol at " + seconds(max) + (enrolOk ? "; enough to enrol" : verifyOk ? "; enough to verify" : ""));
  }

  function usersOf(list) { return list.map(function (x) { return x.bioUserId; }).sort().join(","); }

  function onVerification(list) {
    if (!list || !list.length) { return; }
    var r = list[0], users = usersOf(list);
    if (r.limitType === "STARTING") {
      // The same users again (this panel reconnected, or another desktop joined): keep the result.
      if (users === state.users && state.result) { return; }
      if (state.users && users !== state.users && users !== pushUsers) {
        notice("A new verification request for this call replaced " + state.users.replace(/,/g, ", ") +
               ": now verifying " + users.replace(/,/g, ", ") + ".");
      }
    } else if (users !== state.users) {
      return;                  // a late row of a verification already replaced on screen
    }
    state.users = users;
    state.result = { user: r.bioUserId, band: r.bioResult, score: r.bioScore, kind: r.limitType,
                     speech: r.speechMillis, errorType: r.errorType, mixed: r.mixed === true };
    render();
  }

  function onStatus(p) {
    state.status = p.status;
    state.noCustomerAudio = p.reason === "NO_CUSTOMER_AUDIO";
    render();
  }

  function addAlert(id, title, text) {
    var box = $("alerts");
    var el = document.getElementById(id);
    if (!el) {
      el = document.createElement("div");
      el.id = id;
      el.className = "alert";
      el.setAttribute("role", "alert");
      box.appendChild(el);
    }
    el.textContent = "";
    var strong = document.createElement("strong");
    strong.textContent = title;
    el.appendChild(strong);
    el.appendChild(document.createTextNode(text));
  }

  function onTts(p) {
    // The seed's labels are TTS_Detected and No_TTS_Detected: only the first is an alarm.
    if (!p || p.label !== "TTS_Detected") { return; }
    addAlert("alert-tts", "Synthetic voice suspected",
             "The caller's voice may be machine-generated (detection score " + Number(p.detectionScore).toFixed(2) +
             "). Do not rely on the voice result; verify the caller another way.");
  }

  function onBlocklist(list) {
    (Array.isArray(list) ? list : [list]).forEach(function (b, i) {
      if (!b || b.label !== "MATCH") { return; }
      addAlert("alert-blocklist-" + i, "Blocklist: " + (b.risk_level || "match").replace(/_/g, " "),
               b.custom_agent_message || "A blocklisted voice has been detected");
    });
  }

  function onSpeakerChange(p) {
    if (!p || !p.userChanged) { return; }
    state.speakerChanged = true;
    addAlert("alert-speaker", "Different speaker", "The caller's voice changed during the call; check who you are talking to");
    render();
  }

  function expire() {
    state.expired = true;
    notice("This panel's session has expired or is not valid. Close the panel and open it again from the call: " +
           "your desktop then starts a new session.", "error");
    render();
    if (socket) { socket.disconnect(); }
  }

  function request(event, users) {
    if (socket && socket.connected) {
      socket.emit(event, { token: token, users: users || "", time: new Date().toISOString() });
    }
  }

  function startPush(users) {
    pushUsers = users.split(",").map(function (u) { return u.trim(); }).filter(Boolean).sort().join(",");
    request("verification", users);
  }

  function connect() {
    socket = io(location.origin + cfg.socket_namespace, { path: cfg.socket_path, transports: ["websocket"] });
    socket.on("connect", function () {
      if (state.status === "DISCONNECTED") { state.status = "CONNECTING"; render(); }
      request("status", pushUsers);
      if (pushUsers) { request("verification", pushUsers); }
    });
    socket.on("disconnect", function () {
      if (!state.expired) { state.status = "DISCONNECTED"; render(); }
    });
    socket.on("status-" + token, onStatus);
    socket.on("clean-speech-" + token, function (p) { setSpeech(p.cleanSpeechDuration, p.enoughSpeechDetected); });
    socket.on("verification-" + token, onVerification);
    socket.on("TTS-Detection-" + token, onTts);
    socket.on("blocklist-Detection-" + token, onBlocklist);
    socket.on("speaker-change-" + token, onSpeakerChange);
    socket.on("error", function (e) {
      if (e && (e.code === "UNAUTHORIZED" || e.code === "TOKEN_EXPIRED")) { expire(); return; }
      say((e && e.message) || "The gateway reported an error.", true);
    });
  }

  function api(method, path, body) {
    var init = { method: method, headers: { Authorization: "Bearer " + token } };
    if (body) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (r.status === 401) { expire(); }
        return { ok: r.ok, status: r.status, body: j };
      });
    });
  }

  function problem(res, fallback) {
    if (res.status === 401) { return "The session has expired: reopen the panel from the call."; }
    return res.body && res.body.error ? res.body.error.message : fallback;
  }

  function userId() {
    var input = $("user-id");
    var v = input.value.trim();
    if (!/^[0-9A-Za-z_+\-]{1,128}$/.test(v)) {
      say("Enter the customer's user id (letters, digits, _ + -).", true);
      input.focus();
      return null;
    }
    return v;
  }

  // One sentence on what an on-demand result says: never "verified" unless the voice matched.
  function outcome(u, b) {
    var ended = state.status === "CALL_CLOSED" ? " (the call has ended: result from all its speech)" : "";
    if (/^TRUE_/.test(b.bio_result)) { return u + ": the voice matches (" + STRENGTH[b.bio_result.split("_")[1]] + ")" + ended + "."; }
    if (/^FALSE_/.test(b.bio_result)) { return u + ": the voice does not match" + ended + "."; }
    if (b.bio_result === "NOT_SCORED") {
      return u + (b.error_type === "OPTED_OUT" ? " opted out of voice verification." :
                  b.error_type === "RE_ENROLL" ? " must enrol again." : " is not enrolled.");
    }
    return "Not enough speech yet to verify " + u + ended + ".";
  }

  function verify(ev) {
    if (ev) { ev.preventDefault(); }
    var u = userId();
    if (!u || state.expired) { return; }
    say("Verifying " + u + "…");
    api("GET", "/verification/ondemand?users=" + encodeURIComponent(u)).then(function (res) {
      if (!res.ok) { say(problem(res, "The verification failed."), true); return; }
      var b = res.body;
      state.users = u;
      state.result = { user: b.bio_plain_user_id, band: b.bio_result, score: b.bio_score, kind: "ON-DEMAND",
                       speech: b.speech_millis, errorType: b.error_type };
      if (b.user_changed) { state.speakerChanged = true; }
      render();
      say(outcome(u, b) + (state.status === "CALL_CLOSED" ? "" : " Live updates follow as the caller speaks."));
      startPush(u);
    }, function () { say("The gateway cannot be reached.", true); });
  }

  function enrol() {
    var u = userId();
    if (!u || state.expired) { return; }
    $("enrol-btn").disabled = true;
    say("Enrolling " + u + "…");
    api("POST", "/enrol", { user_id: u }).then(function (res) {
      $("enrol-btn").disabled = state.expired;
      if (res.ok) { say("Enrolled " + u + "."); } else { say(problem(res, "The enrolment failed."), true); }
    }, function () { $("enrol-btn").disabled = false; say("The gateway cannot be reached.", true); });
  }

  function init() {
    if (!token) { expire(); return; }
    $("actions").addEventListener("submit", verify);
    $("enrol-btn").addEventListener("click", enrol);
    var users = params.getAll("users").join(",");
    if (users) { $("user-id").value = users.split(",")[0].trim(); startPush(users); }
    render();
    api("GET", "/agent/config").then(function (res) {
      if (res.ok) { for (var k in res.body) { cfg[k] = res.body[k]; } }
      else if (!state.expired) { say(problem(res, "The panel could not load its settings."), true); }
      $("verify-at").textContent = seconds(cfg.verify_min_speech_ms);
      $("enrol-at").textContent = seconds(cfg.enrol_min_speech_ms);
      $("speech-bar").setAttribute("aria-valuemax", String(cfg.enrol_min_speech_ms));
      $("verify-mark").style.left = (100 * cfg.verify_min_speech_ms / cfg.enrol_min_speech_ms).toFixed(1) + "%";
      setSpeech(0, false);
      render();
      if (res.ok) { connect(); }
    }, function () { say("The gateway cannot be reached.", true); });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
}());
