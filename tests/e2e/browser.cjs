// Headless Chromium as every e2e driver starts it (Debian's, or $CHROMIUM).
const { chromium } = require("playwright-core");

function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
           "--autoplay-policy=no-user-gesture-required"],
  });
}

module.exports = { launch };
