// One end-to-end flow with the official Node socket.io-client: ask for status and push
// verification, print "ready" once both are acknowledged, then record every event until the
// call closes and print them as one JSON line.
// usage: node sio_flow.js <base url> <token> <users>
"use strict";
const { io } = require("socket.io-client");

const [url, token, users] = process.argv.slice(2);
const socket = io(url + "/agent-socket/socket", { path: "/agent-socket/socket.io", transports: ["websocket"],
                                                  reconnection: false });
const events = [];
const timer = setTimeout(() => finish(2, "timeout"), 60000);

function finish(code, why) {
  clearTimeout(timer);
  process.stdout.write(JSON.stringify({ why, events }) + "\n");
  socket.close();
  process.exitCode = code;
}

socket.onAny((event, data) => {
  events.push({ event, data });
  if (event === "status-" + token && data.status === "CALL_CLOSED") { finish(0, "closed"); }
});
socket.on("connect_error", (err) => finish(3, "connect_error: " + err.message));
socket.on("connect", async () => {
  const payload = { token, users, time: new Date().toISOString() };
  const a = await socket.emitWithAck("status", payload);
  const b = await socket.emitWithAck("verification", payload);
  process.stdout.write(JSON.stringify({ ready: true, acks: [a, b] }) + "\n");
});
