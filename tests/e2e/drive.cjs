// Usage: node drive.cjs PAGE_URL [watch|load|finish]
// Opens the page in headless Chromium, plays 0 -> ~2 s, pauses, seeks to 10 s, plays ~1.5 s,
// then closes the page while playing. Prints JSON: what the <video> reports it played.
const { launch } = require("./browser.cjs");

async function main() {
  const url = process.argv[2];
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const logs = [];
    page.on("console", (m) => logs.push(m.text()));
    await page.goto(url);
    await page.waitForFunction(() => {
      const v = document.querySelector("#video");
      return v && v.readyState === 4 && v.buffered.length && v.buffered.end(0) >= v.duration - 0.1;
    }, null, { timeout: 20000 });
    await page.waitForFunction(() => window.socketReady === true, null, { timeout: 20000 });
    const ua = await page.evaluate(() => navigator.userAgent);
    const mode = process.argv[3] || "watch";
    if (mode === "load") { // loads the player and never plays
      await page.waitForTimeout(500);
      await page.close();
      console.log(JSON.stringify({ played: [], ua, logs }));
      return;
    }
    if (mode === "finish") { // plays the last 2 seconds to the end
      await page.evaluate(() => {
        const v = document.querySelector("#video");
        v.currentTime = v.duration - 2;
      });
      await page.waitForFunction(() => !document.querySelector("#video").seeking);
      await page.evaluate(() => document.querySelector("#video").play());
      await page.waitForFunction(() => document.querySelector("#video").ended, null,
                                 { timeout: 20000 });
      await page.waitForTimeout(800);
      await page.close();
      console.log(JSON.stringify({ played: [], ua, logs }));
      return;
    }
    await page.evaluate(() => document.querySelector("#video").play());
    await page.waitForTimeout(2000);
    await page.evaluate(() => document.querySelector("#video").pause());
    await page.waitForTimeout(500);
    await page.evaluate(() => { document.querySelector("#video").currentTime = 10; });
    await page.waitForFunction(() => !document.querySelector("#video").seeking);
    await page.waitForTimeout(300);
    await page.evaluate(() => document.querySelector("#video").play());
    await page.waitForTimeout(1500);
    const played = await page.evaluate(() => {
      const r = document.querySelector("#video").played;
      const out = [];
      for (let i = 0; i < r.length; i++) out.push([r.start(i), r.end(i)]);
      return out;
    });
    await page.close(); // closing the page sends nothing; the socket just drops
    console.log(JSON.stringify({ played, ua, logs }));
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
