// The dashboard: controls whose state lives in the URL, and three views (overview, one
// video, sessions), every number fetched from the public API.
import { ApiError, call, labelSeconds, sum } from "./api.js";
import { bars, chart, empty, fmt, h, panel, table } from "./ui.js";

const BROWSERS = ["brave", "chrome", "edge", "firefox", "ie", "opera", "other", "safari"];
const main = document.getElementById("main");
const form = document.getElementById("controls");
const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const ZONES = [browserZone, "UTC", "Europe/London", "Europe/Berlin", "America/New_York",
  "America/Los_Angeles", "Asia/Kolkata", "Asia/Tokyo", "Australia/Sydney"];
let live = null; // the "watching now" refresh timer
let generation = 0; // a newer render makes older fetches' results moot

// -- state in the URL --------------------------------------------------------------
function readState() {
  const q = new URLSearchParams(location.search);
  return {
    view: q.get("view") || "overview", key: q.get("key") || "", video: q.get("video") || "",
    tf: q.get("tf") || "30 days", from: q.get("from") || "", to: q.get("to") || "",
    interval: q.get("interval") || "1 day", tz: q.get("tz") || browserZone,
    session: q.get("session") || "", issue: q.get("issue") || "",
  };
}

function writeState(state, push = true) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(state)) if (value) q.set(name, value);
  const url = `${location.pathname}?${q}`;
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}

function go(changes) {
  writeState({ ...readState(), ...changes });
  render();
}

function selection(state, withVideo = true) {
  const query = { key: state.key };
  if (withVideo && state.video) query.video = JSON.parse(state.video);
  return { query };
}

function timeframe(state) {
  if (state.tf !== "custom" || !state.from || !state.to) {
    return state.tf === "custom" ? "30 days" : state.tf;
  }
  const from = Date.parse(`${state.from}T00:00:00Z`) / 1000;
  const to = Date.parse(`${state.to}T00:00:00Z`) / 1000 + 86400;
  return { from, to: Math.max(to, from + 3600) };
}

function bucketBody(state, extra = {}) {
  return { ...selection(state), timeframe: timeframe(state), interval: state.interval,
    timezone: state.tz, ...extra };
}

function videoName(video, identifier) {
  if (video && typeof video === "object") {
    return video.title || video.video_id || video.id || JSON.stringify(video);
  }
  return identifier || "(unnamed)";
}

// -- controls ---------------------------------------------------------------------
async function fillControls(state) {
  const keys = (await call("keys")).keys.filter((k) => !k.disabled_at).map((k) => k.key);
  if (!state.key && keys.length) { state.key = keys[0]; writeState(state, false); }
  const keySelect = form.elements.key;
  keySelect.replaceChildren(...keys.map((k) => h("option", { value: k }, k)));
  keySelect.value = state.key;
  const zones = [...new Set([...ZONES, state.tz])];
  form.elements.tz.replaceChildren(...zones.map((z) => h("option", { value: z },
    z === browserZone ? `${z} (this browser)` : z)));
  for (const name of ["tf", "interval", "tz", "from", "to"]) form.elements[name].value = state[name];
  form.classList.toggle("custom-range", state.tf === "custom");
  const videoSelect = form.elements.video;
  videoSelect.replaceChildren(h("option", { value: "" }, "All videos"));
  if (state.key) {
    const top = await call("videos", { ...selection(state, false), timeframe: timeframe(state),
      limit: 100, minimum_watch_seconds: 0 });
    for (const v of top.videos) {
      videoSelect.append(h("option", { value: JSON.stringify(v.video) }, videoName(v.video, v.identifier)));
    }
    if (state.video && ![...videoSelect.options].some((o) => o.value === state.video)) {
      videoSelect.append(h("option", { value: state.video }, videoName(JSON.parse(state.video))));
    }
  }
  videoSelect.value = state.video;
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    const current = link.dataset.view === state.view;
    link.toggleAttribute("aria-current", current);
    if (current) link.setAttribute("aria-current", "page");
    link.href = `?${new URLSearchParams({ ...state, view: link.dataset.view, session: "" })}`;
  }
  return keys;
}

form.addEventListener("change", (event) => {
  const name = event.target.name;
  const changes = { [name]: event.target.value };
  if (name === "key") changes.video = "";
  if (name === "tf" && event.target.value === "custom") {
    const today = new Date().toISOString().slice(0, 10);
    const monthAgo = new Date(Date.now() - 30 * 86400e3).toISOString().slice(0, 10);
    changes.from = form.elements.from.value || monthAgo;
    changes.to = form.elements.to.value || today;
  }
  go(changes);
});
for (const link of document.querySelectorAll("nav a[data-view]")) {
  link.addEventListener("click", (event) => {
    event.preventDefault();
    go({ view: link.dataset.view, session: "" });
  });
}
window.addEventListener("popstate", render);

// -- shared panels ------------------------------------------------------------------
function playsPanel(plays, title) {
  const rows = plays.views.map((b) => [b.interval, b.views, b.total_view_time]);
  const body = plays.views.length
    ? chart([{}, { label: "Views" }, { label: "Watch time (min)" }],
      [plays.views.map((b) => labelSeconds(b.interval)), plays.views.map((b) => b.views),
        plays.views.map((b) => +(b.total_view_time / 60).toFixed(2))], { bars: true })
    : empty("No plays in this timeframe yet", { href: "/", text: "open the example page and play the video" });
  return panel("plays", title, { csv: { header: ["interval", "views", "total_view_time"], rows } }, body);
}

function breakdownPanels(plays) {
  const totals = (field) => {
    const out = {};
    for (const b of plays.views) for (const [name, n] of Object.entries(b[field])) out[name] = (out[name] || 0) + n;
    return out;
  };
  return [["browser", "Browsers"], ["platform", "Platforms"], ["device_type", "Devices"]].map(([field, title]) => {
    const counts = totals(field);
    const rows = Object.entries(counts).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    return panel(`${field}s`, title, { size: "third", csv: { header: [field, "views"], rows } },
      rows.length ? bars(counts) : empty("Nothing yet"));
  });
}

function sourcesPanel(sources, size = "half") {
  const totals = {};
  for (const s of sources.sources) totals[s.path] = (totals[s.path] || 0) + s.views;
  const rows = Object.entries(totals).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  return panel("sources", "Top sources", { size, csv: { header: ["page", "views"], rows } },
    rows.length ? table([{ title: "Page", show: (r) => r[0] }, { title: "Views", num: true, show: (r) => fmt.int(r[1]) }],
      rows.slice(0, 15)) : empty("No pages yet"));
}

function completionPanel(completion) {
  const total = { views: 0, views_with_duration: 0, finishes: 0, percent: 0, reached: {} };
  for (const b of completion.completion) {
    total.views += b.views;
    total.views_with_duration += b.views_with_duration;
    total.finishes += b.finishes;
    total.percent += (b.average_percent_watched || 0) * b.views_with_duration;
    for (const [m, n] of Object.entries(b.reached)) total.reached[m] = (total.reached[m] || 0) + n;
  }
  const steps = [["Views", total.views_with_duration],
    ...["25", "50", "75", "95", "100"].map((m) => [`Reached ${m} %`, total.reached[m] || 0]),
    ["Finished", total.finishes]];
  const average = total.views_with_duration ? total.percent / total.views_with_duration : null;
  const note = total.views_with_duration
    ? `Average ${average.toFixed(1)} % watched per view; views whose duration is unknown ` +
      `(${fmt.int(total.views - total.views_with_duration)}) are left out.`
    : null;
  return panel("completion", "Completion funnel", { size: "half", note,
    csv: { header: ["step", "views"], rows: steps } },
  total.views_with_duration ? bars(Object.fromEntries(steps)) : empty("No views with a known duration yet"));
}

// Quality of experience: totals over the timeframe (one 10-year bucket holds it whole, so
// the percentiles are the server's, not averages of averages) and startup time per bucket
function qoePanel(total, perBucket) {
  const t = total.qoe.reduce((a, b) => (b.views > (a ? a.views : -1) ? b : a), null);
  const pct = (x) => (x === null || x === undefined ? "–" : `${x.toFixed(1)} %`);
  const note = "Views whose page uses the vidmetrics client (/client/vidmetrics.js); " +
    "@maveio/metrics sends no QoE and is left out. Definitions: docs/api.md.";
  if (!t || !t.views) {
    return panel("qoe", "Quality of experience", { note }, empty("No views with QoE data yet",
      { href: "/", text: "the example page uses the vidmetrics client" }));
  }
  const figures = h("div", { class: "tiles" },
    tile("tile-startup", "Startup p50", fmt.ms(t.startup_time_ms.p50)),
    tile("tile-startup-95", "Startup p95", fmt.ms(t.startup_time_ms.p95), "", issueLink("slow_start")),
    tile("tile-rebuffer", "Rebuffering", pct(t.rebuffer_percentage), "", issueLink("stalled")),
    tile("tile-failures", "Playback failures", pct(t.playback_failure_percentage), "", issueLink("failed")),
    tile("tile-startup-failures", "Startup failures", pct(t.startup_failure_percentage), "",
      issueLink("startup_failure")),
    tile("tile-exits", "Exits before start", pct(t.exits_before_start_percentage), "",
      issueLink("exit_before_start")));
  const s = t.scores;
  const scoreTiles = h("div", { class: "tiles scores", id: "scores" },
    tile("tile-score-experience", "Viewer experience", score(s.viewer_experience), "main"),
    tile("tile-score-success", "Playback success", score(s.playback_success), "", issueLink("failed")),
    tile("tile-score-startup", "Startup time", score(s.startup_time), "", issueLink("slow_start")),
    tile("tile-score-smoothness", "Smoothness", score(s.smoothness), "", issueLink("stalled")),
    tile("tile-score-quality", "Video quality", score(s.video_quality), "", issueLink("low_quality")));
  const rows = perBucket.qoe.map((b) => [b.interval, b.views, b.startup_time_ms.p50, b.startup_time_ms.p95,
    b.rebuffer_percentage, b.playback_failure_percentage, b.exits_before_start_percentage,
    ...SCORES.map(([name]) => b.scores[name])]);
  const withStartup = perBucket.qoe.filter((b) => b.startup_time_ms.p50 !== null);
  const body = withStartup.length
    ? chart([{}, { label: "Startup p50 (ms)" }, { label: "Startup p95 (ms)" }],
      [withStartup.map((b) => labelSeconds(b.interval)), withStartup.map((b) => b.startup_time_ms.p50),
        withStartup.map((b) => b.startup_time_ms.p95)], { height: 200, sameScale: true })
    : "";
  const scored = perBucket.qoe.filter((b) => b.scores.viewer_experience !== null);
  const trend = scored.length > 1
    ? chart([{}, ...SCORES.map(([, label]) => ({ label }))],
      [scored.map((b) => labelSeconds(b.interval)), ...SCORES.map(([name]) => scored.map((b) => b.scores[name]))],
      { height: 200, sameScale: true })
    : "";
  return panel("qoe", `Quality of experience · ${fmt.int(t.views)} views`, { note, csv: { header: [
    "interval", "views", "startup_p50_ms", "startup_p95_ms", "rebuffer_percentage",
    "playback_failure_percentage", "exits_before_start_percentage", ...SCORES.map(([name]) => name)], rows } },
  scoreTiles, scoresHow(), figures, body, trend);
}

// the viewer-experience scores (docs/api.md, /api/v1/qoe), in the order they are shown
const SCORES = [["viewer_experience", "Viewer experience"], ["playback_success", "Playback success"],
  ["startup_time", "Startup time"], ["smoothness", "Smoothness"], ["video_quality", "Video quality"]];
const score = (x) => (x === null || x === undefined ? "–" : x.toFixed(0));

function scoresHow() {
  const item = (name, text) => h("li", {}, h("b", {}, name), ` — ${text}`);
  return h("details", { class: "how", id: "scores-how" }, h("summary", {}, "How are the scores computed?"),
    h("p", {}, "Each view gets 0–100 per score (Mux Data's published definitions); a score here is the mean " +
      "over the views it applies to, exact, not sampled."),
    h("ul", {},
      item("Playback success", "100 if the view started, 0 if it failed, 50 if the viewer left before the first frame " +
        "(no score if they left within 1 s)."),
      item("Startup time", "100 · 8 / (8 + startup seconds): 1 s gives 89, 4 s gives 67."),
      item("Smoothness", "the mean of 100 / √(1 + (stalls / 2)²) and 100 · e^(−10 · share of time stalled)."),
      item("Video quality", "100 · e^(−0.33 · (0.15 · largest + 0.85 · mean upscale)), from the renditions the " +
        "vidmetrics client reports and the size they were shown at (2× enlarged gives 72)."),
      item("Viewer experience", "ours: playback success × the mean of the view's other scores / 100.")));
}

function playRate(plays) {
  const views = sum(plays.views, (b) => b.views);
  const impressions = sum(plays.views, (b) => b.impressions);
  return impressions ? fmt.pct(views / impressions) : "–";
}

function tile(id, label, value, extra = "", changes = null) {
  const parts = [h("div", { class: "label" }, label), h("div", { class: "value" }, value)];
  if (!changes) return h("div", { class: `tile ${extra}`, id }, ...parts);
  // a tile that opens the sessions it counts (the session list, filtered)
  return h("a", { class: `tile link ${extra}`, id, href: hrefOf(changes), title: "Show these sessions",
    onclick: (e) => { e.preventDefault(); go(changes); } }, ...parts);
}

function hrefOf(changes) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries({ ...readState(), ...changes })) if (value) q.set(name, value);
  return `${location.pathname}?${q}`;
}

// the session list's issue filter (docs/api.md, /api/v1/sessions)
const ISSUES = [["failed", "Failed"], ["startup_failure", "Startup failures"],
  ["exit_before_start", "Left before start"], ["stalled", "Stalled"], ["slow_start", "Slow start (> 4 s)"],
  ["low_quality", "Upscaled"]];
const ISSUE_NAMES = Object.fromEntries(ISSUES);
const issueLink = (issue) => ({ view: "sessions", issue, session: "" });

async function watchingTile(state) {
  const node = tile("tile-watching", "Watching now", "…", "live");
  const refresh = async () => {
    try {
      const { watching } = await call("watching", selection(state));
      node.querySelector(".value").textContent = fmt.int(watching);
    } catch { /* keep the last figure */ }
  };
  await refresh();
  live = setInterval(refresh, 5000);
  return node;
}

// -- views --------------------------------------------------------------------------
async function overview(state) {
  const [plays, top, sources, completion, watching, qoeTotal, qoe] = await Promise.all([
    call("plays", bucketBody(state)),
    call("videos", { ...selection(state), timeframe: timeframe(state), limit: 10 }),
    call("sources", bucketBody(state)),
    call("completion", bucketBody(state)),
    watchingTile(state),
    call("qoe", bucketBody(state, { interval: "10 years" })),
    call("qoe", bucketBody(state)),
  ]);
  const views = sum(plays.views, (b) => b.views);
  const watch = sum(plays.views, (b) => b.total_view_time);
  const tiles = h("div", { class: "tiles" },
    tile("tile-views", "Views", fmt.int(views)),
    tile("tile-watch", "Watch time", fmt.duration(watch)),
    tile("tile-average", "Average per view", fmt.duration(views ? watch / views : 0)),
    tile("tile-play-rate", "Play rate", playRate(plays)),
    watching);
  const topRows = top.videos.map((v) => [videoName(v.video, v.identifier), v.views, v.total_view_time, v]);
  const topPanel = panel("top-videos", "Top videos", { size: "half",
    csv: { header: ["video", "views", "total_view_time"], rows: topRows.map((r) => r.slice(0, 3)) } },
    topRows.length ? table([
      { title: "Video", show: (r) => r[0] },
      { title: "Views", num: true, show: (r) => fmt.int(r[1]) },
      { title: "Watch time", num: true, show: (r) => fmt.duration(r[2]) },
    ], topRows, (r) => go({ view: "video", video: JSON.stringify(r[3].video) })) : empty("No videos yet"));
  return [tiles, playsPanel(plays, "Views and watch time"), topPanel, completionPanel(completion),
    qoePanel(qoeTotal, qoe), sourcesPanel(sources, ""), ...breakdownPanels(plays)];
}

async function videoView(state) {
  if (!state.video) {
    const top = await call("videos", { ...selection(state), timeframe: timeframe(state), limit: 20 });
    return [panel("pick-video", "Pick a video", {},
      top.videos.length ? table([{ title: "Video", show: (v) => videoName(v.video, v.identifier) },
        { title: "Views", num: true, show: (v) => fmt.int(v.views) }], top.videos,
      (v) => go({ video: JSON.stringify(v.video) })) : empty("No videos yet", { href: "/", text: "open the example page" }))];
  }
  const [plays, engagement, sources, completion, qoeTotal, qoe] = await Promise.all([
    call("plays", bucketBody(state)),
    call("engagement", { ...selection(state), timeframe: timeframe(state), ranges: 100 }),
    call("sources", bucketBody(state)),
    call("completion", bucketBody(state)),
    call("qoe", bucketBody(state, { interval: "10 years" })),
    call("qoe", bucketBody(state)),
  ]);
  const ranges = engagement.engagement;
  const retention = panel("retention", "Retention over the video's timeline", {
    note: "Sessions that watched each part of the video (seeking ahead counts as watching where it landed).",
    csv: { header: ["from", "to", "viewers"], rows: ranges.map((r) => [r.range_time.from, r.range_time.to, r.viewers]) },
  }, ranges.length
    ? chart([{}, { label: "Viewers" }], [ranges.map((r) => r.range_time.from), ranges.map((r) => r.viewers)], { xTime: false })
    : empty("Nobody watched this video in this timeframe"));
  return [h("div", { class: "tiles" },
    tile("tile-views", "Views", fmt.int(sum(plays.views, (b) => b.views))),
    tile("tile-watch", "Watch time", fmt.duration(sum(plays.views, (b) => b.total_view_time))),
    tile("tile-play-rate", "Play rate", playRate(plays)),
    await watchingTile(state)),
  playsPanel(plays, "Views and watch time"), retention, completionPanel(completion),
  qoePanel(qoeTotal, qoe), sourcesPanel(sources), ...breakdownPanels(plays)];
}

// a session's QoE in a few characters: its startup time, or what went wrong
function quality(s) {
  const q = s.qoe;
  if (!q) return "–";
  if (q.failed_before_start) return "failed";
  if (q.exited_before_start) return "left before start";
  const startup = q.startup_ms === null ? "" : fmt.ms(q.startup_ms);
  return [startup, q.rebuffer_count ? `${q.rebuffer_count} stall${q.rebuffer_count > 1 ? "s" : ""}` : "",
    q.failure !== null ? "failed" : ""].filter(Boolean).join(" · ") || "starting";
}

// a view's overall score, and under it the parts it has
function scoreTile(q) {
  const node = tile("tile-score", "Experience score", q ? score(q.scores.viewer_experience) : "–");
  if (!q) return node;
  const parts = SCORES.slice(1).filter(([name]) => q.scores[name] !== null)
    .map(([name, label]) => `${label} ${score(q.scores[name])}`);
  node.append(h("div", { class: "sub" }, parts.join(" · ") || "no parts: never started"));
  return node;
}

function localTime(iso, zone) {
  return new Date(iso).toLocaleString("en-GB", { timeZone: zone, dateStyle: "medium", timeStyle: "medium" });
}

async function sessionsView(state) {
  if (state.session) return sessionDetail(state);
  const base = { ...selection(state), timeframe: timeframe(state), limit: 50 };
  if (ISSUE_NAMES[state.issue]) base.issue = state.issue;
  const first = await call("sessions", base);
  const columns = [
    { title: "Started", show: (s) => localTime(s.started_at, state.tz) },
    { title: "Video", show: (s) => videoName(s.metadata, s.identifier) },
    { title: "Device", narrow: false, show: (s) => `${s.browser} · ${s.platform} · ${s.device}` },
    { title: "Page", narrow: false, show: (s) => s.page || "" },
    { title: "Watched", num: true, show: (s) => fmt.duration(s.watch_seconds) },
    { title: "Quality (startup · stalls)", num: true, show: (s) => quality(s) },
    { title: "Score", num: true, show: (s) => (s.qoe ? score(s.qoe.scores.viewer_experience) : "–") },
    { title: "Issues", show: (s) => h("span", {}, ...s.issues.map((i) => h("span", { class: "chip" }, ISSUE_NAMES[i] || i))) },
  ];
  const rows = [...first.sessions];
  const csvRows = () => rows.map((s) => [s.session, s.started_at, videoName(s.metadata, s.identifier),
    s.browser, s.platform, s.device, s.page, s.watch_seconds, s.issues.join(" ")]);
  const open = (s) => go({ session: String(s.session) });
  const holder = h("div", {}, rows.length ? table(columns, rows, open)
    : base.issue ? empty(`No sessions with this issue (${ISSUE_NAMES[base.issue]}) in this timeframe`)
      : empty("No sessions in this timeframe yet", { href: "/", text: "open the example page" }));
  const filter = h("nav", { class: "chips", id: "issue-filter", "aria-label": "Only sessions that" },
    ...[["", "All sessions"], ...ISSUES].map(([issue, label]) => h("a", {
      class: `chip${(base.issue || "") === issue ? " on" : ""}`, href: hrefOf({ issue }),
      onclick: (e) => { e.preventDefault(); go({ issue }); } }, label)));
  let next = first.next;
  const more = h("button", { type: "button", hidden: !next, onclick: async () => {
    const page = await call("sessions", { ...base, cursor: next });
    rows.push(...page.sessions);
    next = page.next;
    more.hidden = !next;
    holder.replaceChildren(table(columns, rows, open));
  } }, "Load more");
  const title = base.issue ? `Sessions · ${ISSUE_NAMES[base.issue]}` : "Sessions";
  const card = panel("sessions", title, { csv: { header: ["session", "started_at", "video",
    "browser", "platform", "device", "page", "watch_seconds", "issues"], get rows() { return csvRows(); } } },
  filter, holder, more);
  return [card];
}

async function sessionDetail(state) {
  const { session, events } = await call(`sessions/${encodeURIComponent(state.session)}`);
  const kinds = [...new Set(events.map((e) => e.name))];
  const summary = h("div", { class: "tiles" },
    tile("tile-started", "Started", localTime(session.started_at, state.tz)),
    tile("tile-watch", "Watched", fmt.duration(session.watch_seconds)),
    tile("tile-device", "Device", `${session.browser} · ${session.device}`),
    tile("tile-video", "Video", videoName(session.metadata, session.identifier)),
    tile("tile-quality", "Quality", quality(session)),
    scoreTile(session.qoe),
    tile("tile-issues", "Issues", session.issues.map((i) => ISSUE_NAMES[i] || i).join(", ") || "none"));
  const timeline = panel("timeline", "Timeline", {
    note: `Every stored event on a time axis (seconds since the session started): ${kinds.join(", ") || "none"}.`,
    csv: { header: ["at_ms", "name", "payload"], rows: events.map((e) => [e.at_ms, e.name, JSON.stringify(e.payload)]) },
  }, events.length ? chart([{}, { label: "Event" }],
    [events.map((e) => e.at_ms / 1000), events.map((e) => kinds.indexOf(e.name) + 1)], { xTime: false, height: 160 }) : empty("No raw events kept for this session"),
  events.length ? table([{ title: "At (s)", num: true, show: (e) => (e.at_ms / 1000).toFixed(3) },
    { title: "Event", show: (e) => e.name }, { title: "Details", show: (e) => JSON.stringify(e.payload) }], events) : "");
  const back = h("p", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); go({ session: "" }); } }, "← All sessions"));
  const watched = panel("watched", "Watched ranges", {
    csv: { header: ["from", "to"], rows: session.watched } },
  session.watched.length ? table([{ title: "From (s)", num: true, show: (r) => r[0] },
    { title: "To (s)", num: true, show: (r) => r[1] }], session.watched) : empty("Nothing watched"));
  return [h("div", { class: "card" }, back), summary, timeline, watched];
}

// -- render -------------------------------------------------------------------------
async function render() {
  const mine = ++generation;
  clearInterval(live);
  const state = readState();
  document.body.dataset.ready = "";
  main.replaceChildren(h("p", { class: "empty" }, "Loading…"));
  try {
    const keys = await fillControls(state);
    let parts;
    if (!keys.length) {
      parts = [panel("welcome", "No ingest key yet", {}, empty("Create one with `vidmetrics keys create`, then open the example page"))];
    } else if (state.view === "video") parts = await videoView(state);
    else if (state.view === "sessions") parts = await sessionsView(state);
    else parts = await overview(state);
    if (mine !== generation) return;
    main.replaceChildren(...parts);
    document.title = `vidmetrics · ${state.view}`;
  } catch (error) {
    if (mine !== generation) return;
    main.replaceChildren(h("p", { class: "error", role: "alert" },
      error instanceof ApiError ? error.message : `Something went wrong: ${error}`));
  }
  document.body.dataset.ready = state.view;
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", render);
else render();
