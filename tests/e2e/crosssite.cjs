// Usage: node crosssite.cjs PLAN_JSON
// PLAN: {page, target}: opens PAGE (another origin) in headless Chromium and from there
// tries what a foreign page can send to TARGET without a CORS preflight: fetch in no-cors
// mode with credentials, sendBeacon with no body and with a text body, a form-encoded
// fetch. Prints each request exactly as the browser sent it (method, URL, headers, body),
// so a test can replay it with the credentials a logged-in browser would add.
const { launch } = require("./browser.cjs");

async function main() {
  const plan = JSON.parse(process.argv[2]);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const sent = [];
    page.on("request", async (r) => {
      if (!r.url().startsWith(plan.target)) return;
      sent.push({ method: r.method(), url: r.url(), headers: await r.allHeaders(),
                  body: r.postData() });
    });
    await page.goto(plan.page, { waitUntil: "domcontentloaded" });
    const attempts = await page.evaluate(async (target) => {
      const out = [];
      const tryIt = async (name, work) => {
        try { out.push([name, String(await work())]); } catch (e) { out.push([name, "threw " + e]); }
      };
      await tryIt("fetch no-cors", () => fetch(target + "?key=cross-fetch", {
        method: "POST", mode: "no-cors", credentials: "include" }).then((r) => r.type));
      await tryIt("fetch form", () => fetch(target + "?key=cross-form", {
        method: "POST", mode: "no-cors", credentials: "include",
        headers: { "content-type": "application/x-www-form-urlencoded" }, body: "key=cross-form" })
        .then((r) => r.type));
      await tryIt("beacon empty", () => navigator.sendBeacon(target + "?key=cross-beacon"));
      await tryIt("beacon text", () => navigator.sendBeacon(target + "?key=cross-text",
        JSON.stringify({ key: "cross-text" })));
      await new Promise((resolve) => setTimeout(resolve, 1500)); // beacons are sent later
      return out;
    }, plan.target);
    console.log(JSON.stringify({ attempts, sent }));
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
