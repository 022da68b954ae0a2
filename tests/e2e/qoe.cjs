// Usage: node qoe.cjs PAGE_URL play|broken|exit
// Drives a page that uses the first-party client (/client/vidmetrics.js) in headless
// Chromium. The page measures its own startup time and stalls (window.measured); this
// prints them as JSON once the scenario is over and the page is closed.
//   play:   request playback, wait for a stall, end it 2 s later, play one second more
//   broken: request playback of a source that fails
//   exit:   request playback of a source that never arrives, close the page after 1 s
//   example: the server's example page: play 1.5 s, pause, close
//   late-broken | late-playing | late-stalled: the page attaches the client (window.attach)
//     only after its source failed / it has played a second / it stalled; then closes
const { launch } = require("./browser.cjs");

async function main() {
  const [url, mode] = process.argv.slice(2);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const logs = [];
    page.on("console", (m) => logs.push(m.text()));
    page.on("pageerror", (e) => logs.push("pageerror: " + e.message));
    await page.addInitScript(() => document.addEventListener("securitypolicyviolation",
      (e) => console.error(`pageerror: CSP violation: ${e.violatedDirective} ${e.blockedURI}`)));
    // not the load event: a media element that is still fetching delays it
    await page.goto(url, { waitUntil: "domcontentloaded" });
    if (mode === "misuse") { // wrong arguments must never throw into the page
      await page.waitForFunction(() => window.misuseDone === true, null, { timeout: 20000 });
      const outcome = await page.evaluate(() => window.misuse);
      await page.close();
      console.log(JSON.stringify({ measured: outcome, logs }));
      return;
    }
    if (mode === "example") { // the server's own example page (first-party client)
      await page.waitForFunction(() => window.metrics && window.metrics.channel
                                 && window.metrics.channel.state === "joined", null,
                                 { timeout: 20000 });
      await page.evaluate(() => document.querySelector("#video").play());
      await page.waitForTimeout(1500);
      await page.evaluate(() => document.querySelector("#video").pause());
      await page.waitForTimeout(300);
      if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
      await page.close();
      console.log(JSON.stringify({ measured: {}, logs }));
      return;
    }
    if (mode.startsWith("late-")) { // the client is attached after something happened
      await page.waitForFunction(() => window.attach, null, { timeout: 20000 });
      if (mode !== "late-broken") {
        await page.evaluate(() => { document.querySelector("#video").play().catch(() => {}); });
      }
      if (mode === "late-broken") { // the source failed before anybody asked to play
        await page.waitForFunction(() => window.measured.errors >= 1, null, { timeout: 20000 });
      } else if (mode === "late-playing") { // playing for a second already
        await page.waitForFunction(() => window.measured.startup !== null, null, { timeout: 20000 });
        await page.waitForTimeout(1000);
      } else if (mode === "late-stalled") { // stalled mid-way already
        await page.waitForFunction(() => window.measured.stalling, null, { timeout: 40000 });
        await page.waitForTimeout(500);
      }
      await page.evaluate(() => window.attach());
      await page.waitForFunction(() => window.socketReady === true, null, { timeout: 20000 });
      if (mode === "late-stalled") { // the stall ends 1.5 s after the client attached
        await page.waitForTimeout(1500);
        await page.evaluate(() => fetch("/release" + new URL(document.querySelector("#video").src).search));
        await page.waitForFunction(() => window.measured.stalls.length >= 1, null, { timeout: 20000 });
      }
      await page.waitForTimeout(1000);
      const measured = await page.evaluate(() => window.measured);
      await page.close();
      console.log(JSON.stringify({ measured, logs }));
      return;
    }
    await page.waitForFunction(() => window.socketReady === true, null, { timeout: 20000 });
    await page.evaluate(() => { document.querySelector("#video").play().catch(() => {}); });
    if (mode === "play") { // the media server holds bytes back: a stall; end it after 2 s
      await page.waitForFunction(() => window.measured.stalling, null, { timeout: 40000 });
      await page.waitForTimeout(2000);
      await page.evaluate(() => fetch("/release" + new URL(document.querySelector("#video").src).search));
      await page.waitForFunction(() => window.measured.stalls.length >= 1, null,
                                 { timeout: 20000 });
      await page.waitForTimeout(1000);
    } else if (mode === "broken") {
      await page.waitForFunction(() => window.measured.errors >= 1, null, { timeout: 20000 });
      await page.waitForTimeout(500);
    } else {
      await page.waitForTimeout(1000);
    }
    const measured = await page.evaluate(() => window.measured);
    await page.close(); // pagehide: the client says `exit`, then the socket closes
    console.log(JSON.stringify({ measured, logs }));
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
