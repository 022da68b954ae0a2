// Small DOM helpers, panels with a CSV download, number formats, and uPlot charts.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    // styles through the CSSOM: the page's CSP refuses inline style attributes
    else if (name === "style") Object.assign(node.style, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const fmt = {
  int: (n) => Math.round(n).toLocaleString("en-US"),
  duration(seconds) {
    if (!seconds) return "0 s";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  },
  pct: (x) => `${(100 * x).toFixed(1)} %`,
  // a duration in milliseconds (startup, seek latency); "–" when there is none
  ms: (x) => (x === null || x === undefined ? "–"
    : x < 1000 ? `${Math.round(x)} ms` : `${(x / 1000).toFixed(2)} s`),
};

// One CSV cell (RFC 4180): empty for null, numbers as they are, text that a spreadsheet
// would run as a formula (=, +, -, @, tab, CR first: OWASP's list) behind an apostrophe,
// and quoted when it holds a comma, a quote, a CR or an LF.
export function csvCell(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return String(v);
  let s = String(v);
  if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

export function csvText(header, rows) {
  return [header, ...rows].map((r) => r.map(csvCell).join(",")).join("\r\n") + "\r\n";
}

export function download(name, header, rows) {
  const blob = new Blob([csvText(header, rows)], { type: "text/csv" });
  const link = h("a", { href: URL.createObjectURL(blob), download: `${name}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// A card with a title, a CSV button for the rows it shows, and its content.
export function panel(id, title, { size = "", csv = null, note = null } = {}, ...content) {
  const button = csv && h("button", {
    type: "button", "aria-label": `Download ${title} as CSV`,
    onclick: () => download(id, csv.header, csv.rows),
  }, "CSV");
  return h("section", { class: `card ${size}`, id, "aria-labelledby": `${id}-title` },
    h("header", {}, h("h2", { id: `${id}-title` }, title), button),
    note && h("p", { class: "legend-note" }, note), ...content);
}

export function empty(text, link) {
  return h("p", { class: "empty" }, text, link ? [" — ", h("a", { href: link.href }, link.text)] : "");
}

export function table(columns, rows, onRow) {
  // a column's class: "num" (right-aligned figures), "hide-narrow" (left out on phones)
  const cls = (c) => [c.num ? "num" : "", c.narrow === false ? "hide-narrow" : ""].join(" ").trim();
  const head = h("tr", {}, columns.map((c) => h("th", { class: cls(c) }, c.title)));
  const body = rows.map((row) => h("tr", onRow ? {
    class: "link", tabindex: "0", onclick: () => onRow(row),
    onkeydown: (e) => { if (e.key === "Enter") onRow(row); },
  } : {}, columns.map((c) => h("td", { class: cls(c) }, c.show(row)))));
  return h("table", {}, h("thead", {}, head), h("tbody", {}, body));
}

export function bars(counts) {
  const entries = Object.entries(counts).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  const top = entries.length ? entries[0][1] : 1;
  return h("div", { class: "bars" }, h("ul", {}, entries.map(([name, n]) => h("li", {},
    h("span", {}, name),
    h("span", { class: "track", role: "img", "aria-label": `${name}: ${n}` },
      h("span", { class: "fill", style: { width: `${(100 * n / top).toFixed(1)}%` } })),
    h("span", { class: "n" }, fmt.int(n))))));
}

// uPlot, sized to its container; x values are seconds shown in UTC (see labelSeconds).
// sameScale: every series on the left axis (else the second one has its own, on the right)
// series colours: the first (filled) in the accent, the others distinct from it and each other
const PALETTE = ["#3157d5", "#e0782d", "#1f7a4d", "#8a4fd1", "#c23b5b"];

export function chart(series, data, { bars: asBars = false, xTime = true, height = 240, sameScale = false } = {}) {
  const box = h("div", { class: "chart", role: "img",
    "aria-label": series.slice(1).map((s) => s.label).join(" and ") });
  const U = window.uPlot;
  const axes = [{ stroke: "#555b66", grid: { stroke: "#eceef1" } },
    { stroke: "#555b66", grid: { stroke: "#eceef1" }, size: 55 }];
  const twoScales = series.length > 2 && !sameScale;
  if (twoScales) axes.push({ side: 1, scale: "y2", stroke: "#555b66", grid: { show: false }, size: 55 });
  const opts = {
    width: 600, height, series: [{}, ...series.slice(1).map((s, i) => ({
      label: s.label, stroke: PALETTE[i % PALETTE.length], width: i ? 1.5 : 2,
      fill: i ? undefined : "rgba(49,87,213,0.12)", scale: i && twoScales ? "y2" : "y",
      paths: asBars && !i ? U.paths.bars({ size: [0.7, 40] }) : undefined,
      points: { show: !asBars },
    }))],
    scales: { x: { time: xTime }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    axes,
    tzDate: (ts) => U.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    legend: { live: false },
  };
  if (twoScales) opts.scales.y2 = { range: (u, min, max) => [0, Math.max(1, max)] };
  const plot = new U(opts, data, box);
  const fit = () => plot.setSize({ width: Math.max(240, box.clientWidth), height });
  new ResizeObserver(fit).observe(box);
  requestAnimationFrame(fit);
  return box;
}
