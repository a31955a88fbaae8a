// Headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) under the Python
// tests' control: one JSON command per stdin line, one JSON answer per stdout line, so a test
// can stream audio into a call and look at the widget step by step.
//
//   {"op": "open", "page": "a", "url": "..."}            open (or reuse) page "a" at url
//   {"op": "wait", "page": "a", "selector": "...", "timeout": 30000}
//   {"op": "text", "page": "a", "selector": "...", "pattern": "<regexp>"}   wait until its text matches
//   {"op": "widget", "page": "a"}                          the widget's visible state (below)
//   {"op": "shot", "page": "a", "path": "...", "selector": "main"}
//   {"op": "focus" | "press" | "type", "page": "a", "selector" | "key" | "text": ...}
//   {"op": "tabs", "page": "a", "n": 3}                    ids focused by n presses of Tab from the body
//   {"op": "close"}
// Answers: {"ok": true, "value": ...} or {"ok": false, "error": "..."}; the first line printed
// is {"ready": true}. Console errors and page errors of every page are collected and returned
// by "widget" (console) so a test can require none.
// usage: node browser.js [chromium path]
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const readline = require("readline");
const { chromium } = require("playwright-core");

const exe = process.argv[2] || "/usr/bin/chromium";

function widgetState() {
  const $ = (id) => document.getElementById(id);
  const text = (id) => ($(id) ? $(id).textContent.trim() : null);
  const score = $("score");
  return {
    status: $("call-status") && $("call-status").dataset.status,
    statusText: text("call-status"),
    state: score && score.dataset.state,
    band: score && score.dataset.band,
    kind: score && score.dataset.kind,
    user: score && score.dataset.user,
    verdict: text("verdict"),
    detail: text("score-kind"),
    advice: text("advice"),
    scoreText: $("meter") && !$("meter").hidden ? text("score-value") : null,
    explained: $("explain") ? !$("explain").hidden : false,
    notice: (() => { const n = $("notice") || document.querySelector(".notice"); return n && !n.hidden ? n.textContent.trim() : null; })(),
    message: text("message"),
    speech: text("speech-text"),
    enrolOk: $("enrol-ok") ? !$("enrol-ok").hidden : false,
    alerts: Array.from(document.querySelectorAll(".alert")).map((e) => ({ id: e.id, text: e.textContent })),
    background: score ? getComputedStyle(score).backgroundColor : null,
    borderStyle: score ? getComputedStyle(score).borderTopStyle : null,
    scrollWidth: document.documentElement.scrollWidth,
    buttonsDisabled: $("verify-btn") ? $("verify-btn").disabled : null,
  };
}

(async () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "vbgw-chromium-"));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: exe, headless: true, viewport: { width: 360, height: 720 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const pages = {};
  const consoleErrors = [];
  const page = async (name) => {
    if (!pages[name]) {
      const p = Object.keys(pages).length === 0 && ctx.pages()[0] ? ctx.pages()[0] : await ctx.newPage();
      p.on("console", (m) => { if (m.type() === "error") { consoleErrors.push(`${name}: ${m.text()}`); } });
      p.on("pageerror", (e) => consoleErrors.push(`${name}: ${e}`));
      pages[name] = p;
    }
    return pages[name];
  };
  const ops = {
    async open(c) { const p = await page(c.page); const r = await p.goto(c.url); return r ? r.status() : null; },
    async wait(c) { await (await page(c.page)).waitForSelector(c.selector, { timeout: c.timeout || 30000 }); return true; },
    async text(c) {   // a function, not a string: the widget's CSP forbids eval, which string predicates need
      await (await page(c.page)).waitForFunction(([sel, re]) => {
        const el = document.querySelector(sel);
        return !!el && new RegExp(re, "i").test(el.textContent);
      }, [c.selector, c.pattern], { timeout: c.timeout || 30000 });
      return true;
    },
    async widget(c) { return { ...(await (await page(c.page)).evaluate(widgetState)), console: consoleErrors.slice() }; },
    async shot(c) {
      const p = await page(c.page);
      await p.evaluate(() => document.activeElement && document.activeElement.blur());   // no focus ring
      const target = c.selector ? await p.$(c.selector) : p;
      await target.screenshot({ path: c.path });
      return fs.statSync(c.path).size;
    },
    async focus(c) { await (await page(c.page)).focus(c.selector); return true; },
    async press(c) { await (await page(c.page)).keyboard.press(c.key); return true; },
    async type(c) { await (await page(c.page)).keyboard.type(c.text); return true; },
    async tabs(c) {
      const p = await page(c.page);
      await p.focus("body");
      const order = [];
      for (let i = 0; i < c.n; i++) {
        await p.keyboard.press("Tab");
        order.push(await p.evaluate(() => document.activeElement && document.activeElement.id));
      }
      return order;
    },
  };
  process.stdout.write(JSON.stringify({ ready: true }) + "\n");
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const c = JSON.parse(line);
    if (c.op === "close") { break; }
    let answer;
    try {
      answer = { ok: true, value: await ops[c.op](c) };
    } catch (e) {
      answer = { ok: false, error: String(e) };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
  }
  await ctx.close();
  fs.rmSync(profile, { recursive: true, force: true });
  process.stdout.write(JSON.stringify({ ok: true, value: "closed" }) + "\n");
})().catch((e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(e) }) + "\n");
  process.exitCode = 1;
});
