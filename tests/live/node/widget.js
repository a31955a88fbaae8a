// The agent widget in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core):
// open /agent?token=...&users=..., print "ready" when connected, wait until a live score with
// its band and EARLY/NORMAL label shows, check keyboard focus order, save a screenshot.
// usage: node widget.js <page url> <screenshot path> [chromium path]
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const [pageUrl, shot, exe = "/usr/bin/chromium"] = process.argv.slice(2);

(async () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "vbgw-chromium-"));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: exe, headless: true, viewport: { width: 360, height: 640 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const out = { console: [] };
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    page.on("console", (m) => { if (m.type() === "error") { out.console.push(m.text()); } });
    page.on("pageerror", (e) => out.console.push(String(e)));
    await page.goto(pageUrl);
    await page.waitForSelector('#call-status[data-status="CALL_OPENED"], #call-status[data-status="BIO_ACTIVE"]');
    process.stdout.write(JSON.stringify({ ready: true }) + "\n");
    await page.waitForSelector('#score[data-kind="NORMAL"][data-band^="TRUE_"]', { timeout: 45000 });
    await page.waitForSelector('#call-status[data-status="CALL_CLOSED"]', { timeout: 20000 });
    await page.waitForSelector("#alert-tts");
    await page.waitForSelector("#alert-blocklist-0");
    out.alerts = await page.$$eval(".alert", (els) => els.map((e) => e.textContent));
    // Keyboard: Tab reaches the user id, then Verify, then Enrol.
    const order = [];
    await page.focus("body");
    for (let i = 0; i < 3; i++) {
      await page.keyboard.press("Tab");
      order.push(await page.evaluate(() => document.activeElement && document.activeElement.id));
    }
    out.focus = order;
    out.state = await page.evaluate(() => ({
      status: document.getElementById("call-status").dataset.status,
      band: document.getElementById("score").dataset.band,
      kind: document.getElementById("score").dataset.kind,
      score: document.getElementById("score-value").textContent,
      label: document.getElementById("score-band").textContent,
      speech: document.getElementById("speech-text").textContent,
      enrolOk: !document.getElementById("enrol-ok").hidden,
      scrollWidth: document.documentElement.scrollWidth,
      scoreColor: getComputedStyle(document.getElementById("score")).backgroundColor,
    }));
    await page.screenshot({ path: shot, fullPage: true });
    // The buttons call the REST API, with the keyboard only: enrol a new user, then verify.
    await page.focus("#user-id");
    await page.keyboard.press("Control+A");
    await page.keyboard.type("cust-widget");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => /Enrolled|error/i.test(document.getElementById("message").textContent));
    out.enrolMessage = await page.textContent("#message");
    await page.focus("#user-id");
    await page.keyboard.press("Enter");
    await page.waitForSelector('#score[data-kind="ON-DEMAND"][data-user="cust-widget"]');
    out.verified = await page.evaluate(() => document.getElementById("score").dataset.band);
    out.ok = true;
  } catch (e) {
    out.ok = false;
    out.error = String(e);
  } finally {
    await ctx.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  process.exitCode = out.ok ? 0 : 1;
})();
