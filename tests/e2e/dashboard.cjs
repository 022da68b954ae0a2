// Usage: node dashboard.cjs PLAN_JSON
// PLAN: {base, user, password, shots: dir, steps: [{name, path, width, height, actions?}]}
// Opens each step's URL in headless Chromium with basic-auth credentials, waits until the
// dashboard says it is ready, takes a screenshot, and reports what the page shows: tile
// values, table cells, the API requests it made, CSV downloads, console errors.
const { launch } = require("./browser.cjs");
const fs = require("fs");

async function ready(page) {
  await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 30000 });
}

async function main() {
  const plan = JSON.parse(process.argv[2]);
  const browser = await launch();
  const report = [];
  try {
    for (const step of plan.steps) {
      const context = await browser.newContext({
        httpCredentials: { username: plan.user, password: plan.password },
        viewport: { width: step.width, height: step.height },
        timezoneId: step.timezone || "Europe/Berlin",
        acceptDownloads: true,
      });
      const page = await context.newPage();
      const errors = [];
      const requests = [];
      page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
      page.on("pageerror", (e) => errors.push(String(e)));
      // anything the Content-Security-Policy refused (also logged, this names it exactly)
      await page.addInitScript(() => document.addEventListener("securitypolicyviolation",
        (e) => console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`)));
      page.on("request", (r) => {
        if (r.url().includes("/api/v1/")) requests.push({ url: r.url(), body: r.postData() });
      });
      const started = Date.now();
      await page.goto(plan.base + step.path);
      await ready(page);
      const readyMs = Date.now() - started;
      const result = { name: step.name, readyMs, errors, requests: [], downloads: {} };
      for (const action of step.actions || []) {
        if (action.select) {
          requests.length = 0;
          await page.evaluate(() => { document.body.dataset.ready = ""; });
          await page.selectOption(action.select, action.value);
          await ready(page);
          result.requests = requests.slice();
        } else if (action.click) {
          await page.evaluate(() => { document.body.dataset.ready = ""; });
          await page.click(action.click);
          await ready(page);
        } else if (action.open) { // a click that changes the page in place (no new render)
          await page.click(action.open);
        } else if (action.download) {
          const [download] = await Promise.all([page.waitForEvent("download"),
            page.click(action.download)]);
          const path = await download.path();
          result.downloads[action.download] = fs.readFileSync(path, "utf8");
        }
      }
      if (!result.requests.length) result.requests = requests.slice();
      await page.waitForTimeout(300); // charts settle to their container size
      result.url = page.url();
      result.tiles = await page.$$eval(".tile", (ts) => Object.fromEntries(
        ts.map((t) => [t.id, t.querySelector(".value").textContent])));
      result.tables = await page.$$eval("section.card", (cards) => Object.fromEntries(
        cards.map((c) => [c.id, [...c.querySelectorAll("tbody tr")].map(
          (tr) => [...tr.children].map((td) => td.textContent))])));
      result.charts = await page.$$eval("canvas", (cs) => cs.length);
      result.main = await page.$eval("main", (m) => m.innerText.slice(0, 6000));
      if (plan.shots) {
        await page.screenshot({ path: `${plan.shots}/${step.name}.png`, fullPage: true });
      }
      report.push(result);
      await context.close();
    }
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(report));
}

main().catch((e) => { console.error(e); process.exit(1); });
