// Drives Debian's chromium (headless, via puppeteer-core) through /docs of a running server:
// the page renders the task operations; "Try it out" without a token gets 401, and after
// "Authorize" with the token gets 200. Every request stays on the server's origin and the page
// logs no error (a Content-Security-Policy violation is one). Writes a screenshot.
// Usage: node docs-browser.cjs BASE TOKEN SCREENSHOT   (JS_TOOLS: where puppeteer-core is)
"use strict";
const puppeteer = require(`${process.env.JS_TOOLS}/node_modules/puppeteer-core`);

const [base, token, screenshot] = process.argv.slice(2);
const fail = (msg) => { console.error(`docs-browser: FAIL: ${msg}`); process.exit(1); };

(async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", // runs as root in CI
      // Offline: any host but the server's fails to resolve, so a CDN reference would show.
      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ],
  });
  const problems = [];
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 1500 });
    const origin = new URL(base).origin;
    page.on("request", (r) => {
      const u = r.url();
      if (!u.startsWith(origin) && !u.startsWith("data:")) problems.push(`request to ${u}`);
    });
    page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("requestfailed", (r) => problems.push(`failed: ${r.url()} ${r.failure()?.errorText}`));

    const resp = await page.goto(`${base}/docs/`, { waitUntil: "networkidle0" });
    if (!resp.ok()) fail(`/docs/ answered ${resp.status()}`);
    const csp = resp.headers()["content-security-policy"] || "";
    if (!csp.includes("default-src 'none'")) fail(`/docs/ has no strict CSP: ${csp}`);

    const op = "#operations-tasks-list_tasks";
    await page.waitForSelector(op, { timeout: 20000 });
    const summaries = await page.$$eval(".opblock-summary-path", (els) => els.map((e) => e.textContent.trim()));
    for (const p of ["/v1/tasks", "/v1/tasks/{id}"]) {
      if (!summaries.some((s) => s.replace(/\u200b/g, "") === p)) fail(`operation ${p} not rendered (${summaries})`);
    }
    console.log(`docs-browser: rendered ${summaries.length} operations`);

    // Expand GET /v1/tasks and execute it: first without a token (401), then authorized (200).
    await page.click(`${op} .opblock-summary`);
    const execute = async () => {
      await page.waitForSelector(`${op} .btn.execute`, { visible: true });
      // "Clear" drops the previous answer (React owns the DOM: never remove nodes by hand).
      const clear = await page.$(`${op} .btn-clear`);
      if (clear) {
        await clear.click();
        await page.waitForSelector(`${op} .live-responses-table`, { hidden: true });
      }
      await page.click(`${op} .btn.execute`);
      await page.waitForSelector(`${op} .live-responses-table tr.response .response-col_status`, { timeout: 10000 });
      return (await page.$eval(`${op} .live-responses-table tr.response .response-col_status`, (e) => e.textContent)).trim();
    };
    const tryOut = await page.$(`${op} .try-out__btn`);
    if (tryOut && (await tryOut.evaluate((b) => b.textContent.trim())) === "Try it out") await tryOut.click();
    const anonymous = await execute();
    if (!anonymous.startsWith("401")) fail(`without a token: ${anonymous}, want 401`);
    console.log(`docs-browser: without a token: ${anonymous}`);
    // The 401 is the API's answer, not an error of the page.
    const before = problems.length;

    await page.click("button.btn.authorize");
    await page.waitForSelector(".modal-ux input", { visible: true });
    await page.type(".modal-ux input", token);
    await page.click(".modal-ux button.btn.modal-btn.auth.authorize");
    await page.click(".modal-ux button.btn-done");
    await page.waitForSelector(".modal-ux", { hidden: true });
    const authorized = await execute();
    if (!authorized.startsWith("200")) fail(`with the token: ${authorized}, want 200`);
    const body = await page.$eval(`${op} .live-responses-table tr.response .response-col_description pre`, (e) => e.textContent);
    if (!JSON.parse(body).items) fail(`the answer is not a task page: ${body}`);
    console.log(`docs-browser: with the token: ${authorized}`);

    // Chromium logs a failed fetch (the 401) as a console error: the only one allowed.
    const unexpected = problems.filter((p, i) => !(i < before && /401/.test(p)));
    if (unexpected.length) fail(`the page had problems:\n  ${unexpected.join("\n  ")}`);
    // The page as the user left it, from the title to the live answer: the operations, the
    // closed lock (authorized) and the 200 of "Try it out".
    const bottom = await page.$eval(`${op} .live-responses-table`, (e) => {
      const r = e.getBoundingClientRect();
      return r.bottom + window.scrollY;
    });
    await page.screenshot({ path: screenshot, clip: { x: 0, y: 0, width: 1280, height: Math.ceil(bottom) + 16 }, captureBeyondViewport: true });
    console.log(`docs-browser: screenshot ${screenshot}`);
  } finally {
    await browser.close();
  }
})().catch((e) => fail(e.stack || String(e)));
