/* vbgw agent widget. Opened as /agent?token=<session token>[&users=<user id>].
   Live results come over Socket.IO (path /agent-socket/socket.io, namespace
   /agent-socket/socket); enrol and verify call the REST API with the same session token. */
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var token = params.get("token") || "";
  var $ = function (id) { return document.getElementById(id); };
  var cfg = { enrol_min_speech_ms: 10000, verify_min_speech_ms: 5000, early_speech_ms: 2000,
              socket_path: "/agent-socket/socket.io", socket_namespace: "/agent-socket/socket" };
  var socket = null;
  var pushUsers = "";

  var STATUS_TEXT = { CONNECTING: "Connecting…", CALL_OPENED: "Call opened", BIO_ACTIVE: "Listening",
                      CALL_CLOSED: "Call closed", SYSTEM_ERROR: "System error", DISCONNECTED: "Disconnected" };
  var BAND_TEXT = { TRUE_HIGH: "Match · high", TRUE_MEDIUM: "Match · medium", TRUE_LOW: "Match · low",
                    FALSE_LOW: "No match · low", FALSE_MEDIUM: "No match · medium", FALSE_HIGH: "No match · high",
                    NO_DATA: "Not enough speech", LOW_DATA: "Not enough speech yet", NOT_SCORED: "Not scored", "": "Starting…" };

  function seconds(ms) { return (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + " s"; }

  function say(text, isError) {
    var m = $("message");
    m.textContent = text;
    m.className = "message" + (isError ? " error" : "");
  }

  function setStatus(status) {
    var el = $("call-status");
    el.dataset.status = status;
    el.textContent = STATUS_TEXT[status] || status.replace(/_/g, " ");
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

  function showResult(r, kind) {
    // r: {bioResult, bioScore, bioUserId, errorType, speechMillis}
    var score = $("score");
    score.dataset.band = r.bioResult || "NONE";
    score.dataset.kind = kind;
    score.dataset.user = r.bioUserId || "";
    var scored = /^(TRUE|FALSE)_/.test(r.bioResult || "");
    $("score-value").textContent = scored ? Math.round(r.bioScore * 100) + "%" : "–";
    $("score-band").textContent = BAND_TEXT[r.bioResult] !== undefined ? BAND_TEXT[r.bioResult] : r.bioResult;
    $("score-kind").textContent = kind + (r.speechMillis ? " · " + seconds(r.speechMillis) : "") +
                                  (r.errorType ? " · " + r.errorType : "");
    $("score-user").textContent = r.bioUserId ? "· " + r.bioUserId : "";
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
    if (!p || !/detected/i.test(p.label || "") || /not/i.test(p.label || "")) { return; }
    addAlert("alert-tts", "Synthetic voice suspected", "TTS detection score " + Number(p.detectionScore).toFixed(2));
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
    addAlert("alert-speaker", "Different speaker", "The caller's voice changed during the call; check who you are talking to");
  }

  function request(event, users) {
    if (socket && socket.connected) {
      socket.emit(event, { token: token, users: users || "", time: new Date().toISOString() });
    }
  }

  function startPush(users) {
    pushUsers = users;
    request("verification", users);
  }

  function connect() {
    socket = io(location.origin + cfg.socket_namespace, { path: cfg.socket_path, transports: ["websocket"] });
    socket.on("connect", function () {
      request("status", pushUsers);
      if (pushUsers) { request("verification", pushUsers); }
    });
    socket.on("disconnect", function () { setStatus("DISCONNECTED"); });
    socket.on("status-" + token, function (p) { setStatus(p.status); });
    socket.on("clean-speech-" + token, function (p) { setSpeech(p.cleanSpeechDuration, p.enoughSpeechDetected); });
    socket.on("verification-" + token, function (list) {
      if (!list || !list.length) { return; }
      var r = list[0];
      // STARTING only announces a new verification; keep showing a score already there for the same user.
      if (r.limitType === "STARTING" && $("score").dataset.band !== "NONE" && $("score").dataset.user === r.bioUserId) { return; }
      showResult(r, r.limitType);
    });
    socket.on("TTS-Detection-" + token, onTts);
    socket.on("blocklist-Detection-" + token, onBlocklist);
    socket.on("speaker-change-" + token, onSpeakerChange);
    socket.on("error", function (e) { say((e && e.message) || "error", true); });
  }

  function api(method, path, body) {
    var init = { method: method, headers: { Authorization: "Bearer " + token } };
    if (body) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) { return { ok: r.ok, body: j }; });
    });
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

  function verify(ev) {
    if (ev) { ev.preventDefault(); }
    var u = userId();
    if (!u) { return; }
    say("Verifying " + u + "…");
    api("GET", "/verification/ondemand?users=" + encodeURIComponent(u)).then(function (res) {
      if (!res.ok) { say(res.body.error ? res.body.error.message : "verification failed", true); return; }
      var b = res.body;
      showResult({ bioResult: b.bio_result, bioScore: b.bio_score, bioUserId: b.bio_plain_user_id,
                   errorType: b.error_type, speechMillis: b.speech_millis }, "ON-DEMAND");
      say("Verified " + u + "; live updates follow as the caller speaks.");
      startPush(u);
    }, function () { say("The gateway cannot be reached.", true); });
  }

  function enrol() {
    var u = userId();
    if (!u) { return; }
    $("enrol-btn").disabled = true;
    say("Enrolling " + u + "…");
    api("POST", "/enrol", { user_id: u }).then(function (res) {
      $("enrol-btn").disabled = false;
      if (res.ok) { say("Enrolled " + u + "."); } else {
        say(res.body.error ? res.body.error.message : "enrolment failed", true);
      }
    }, function () { $("enrol-btn").disabled = false; say("The gateway cannot be reached.", true); });
  }

  function init() {
    if (!token) { setStatus("SYSTEM_ERROR"); say("Open this page with ?token=<session token>.", true); return; }
    $("actions").addEventListener("submit", verify);
    $("enrol-btn").addEventListener("click", enrol);
    var users = params.get("users") || "";
    if (users) { $("user-id").value = users.split(",")[0].trim(); pushUsers = users; }
    api("GET", "/agent/config").then(function (res) {
      if (res.ok) { for (var k in res.body) { cfg[k] = res.body[k]; } }
      else { say(res.body.error ? res.body.error.message : "session not valid", true); }
      $("verify-at").textContent = seconds(cfg.verify_min_speech_ms);
      $("enrol-at").textContent = seconds(cfg.enrol_min_speech_ms);
      $("speech-bar").setAttribute("aria-valuemax", String(cfg.enrol_min_speech_ms));
      $("verify-mark").style.left = (100 * cfg.verify_min_speech_ms / cfg.enrol_min_speech_ms).toFixed(1) + "%";
      setSpeech(0, false);
      if (res.ok) { connect(); }
    }, function () { say("The gateway cannot be reached.", true); });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
}());
