// vidmetrics browser client: a drop-in for @maveio/metrics that also reports quality of
// experience (startup time, rebuffering, seeks, failures, exits before start).
//
//   import { Metrics } from "https://metrics.example.com/client/vidmetrics.js";
//   Metrics.config = { socketPath: "wss://metrics.example.com/socket", apiKey: "..." };
//   new Metrics("#video", { video_id: "abc" }).monitor();
//
// Same API, socket parameters, channel topic, join payload and play/pause events as
// @maveio/metrics 0.1.5; the QoE events have names of their own, which a mave server
// ignores. Privacy: no cookies, no storage, no identifier that outlives the page; page
// addresses are sent without query string or fragment. Nothing here throws into the page.
// The wire protocol: docs/protocol.md.

const VSN = "2.0.0";
const RETRY_MS = [1000, 5000, 10000]; // then every 25 s, like @maveio/metrics
const HEARTBEAT_MS = 30000;
const MAX_BUFFERED = 100; // pushes kept per channel while it is not joined
const FIRST_FRAME_WAIT_MS = 1000; // how long to wait for a painted frame after `playing`
const config = {};
let socket = null;

const retryAfter = (tries) => RETRY_MS[tries] || 25000;
const now = () => performance.now();
const page = () => location.protocol + "//" + location.host + location.pathname;
const guard = (fn) => function (...args) {
  try {
    return fn.apply(this, args);
  } catch (error) {
    console.error("[vidmetrics]:", error);
  }
};

function sessionTopic() {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
  let id = "";
  for (const byte of crypto.getRandomValues(new Uint8Array(21))) id += alphabet[byte & 63];
  return "session:" + id;
}

// -- a Phoenix Channels (v2 JSON) socket: join, push, heartbeat, reconnect -----------------
class Socket {
  constructor(path, params) {
    this.path = path;
    this.params = params;
    this.ref = 0;
    this.channels = new Set();
    this.ws = null;
    this.tries = 0;
    this.pendingBeat = null;
    this.leaving = new Set(); // what to send before the page goes away
    // like the phoenix client: close on pagehide (so the page can enter the back/forward
    // cache), reconnect when it comes back; the monitored videos say `exit` first
    addEventListener("pagehide", guard(() => {
      this.leaving.forEach((say) => say());
      this.disconnect();
    }));
    addEventListener("pageshow", guard((e) => e.persisted && this.connect()));
  }

  url() {
    let base = this.path + "/websocket";
    if (base.startsWith("/")) base = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + base;
    return base + "?" + new URLSearchParams({ ...this.params, vsn: VSN });
  }

  isOpen() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  makeRef() {
    return String(++this.ref);
  }

  connect() {
    if (this.ws) return;
    clearTimeout(this.retry);
    const ws = (this.ws = new WebSocket(this.url()));
    ws.onopen = guard(() => {
      this.tries = 0;
      this.pendingBeat = null;
      this.channels.forEach((c) => c.join());
      this.beat();
    });
    ws.onmessage = guard((e) => this.receive(JSON.parse(e.data)));
    ws.onclose = guard(() => this.closed(ws));
  }

  disconnect() {
    const ws = this.ws;
    this.ws = null;
    clearTimeout(this.beatTimer);
    clearTimeout(this.retry);
    this.channels.forEach((c) => c.errored());
    if (ws) ws.close(1000);
  }

  closed(ws) {
    if (this.ws !== ws) return; // we closed it ourselves
    this.disconnect();
    this.retry = setTimeout(() => this.connect(), retryAfter(this.tries++));
  }

  beat() {
    clearTimeout(this.beatTimer);
    this.beatTimer = setTimeout(guard(() => {
      if (this.pendingBeat) return this.ws && this.ws.close(); // no answer in 30 s: reconnect
      this.pendingBeat = this.makeRef();
      this.send([null, this.pendingBeat, "phoenix", "heartbeat", {}]);
      this.beat();
    }), HEARTBEAT_MS);
  }

  send(frame) {
    if (this.isOpen()) this.ws.send(JSON.stringify(frame));
  }

  receive([joinRef, ref, topic, event, payload]) {
    if (ref && ref === this.pendingBeat) this.pendingBeat = null;
    for (const c of this.channels) if (c.topic === topic) c.receive(joinRef, ref, event, payload);
  }
}

class Channel {
  constructor(socket, topic, payload) {
    this.socket = socket;
    this.topic = topic;
    this.payload = payload;
    this.state = "closed";
    this.buffer = [];
    this.tries = 0;
    socket.channels.add(this);
  }

  join() {
    if (this.state === "left" || !this.socket.isOpen()) return;
    this.state = "joining";
    this.joinRef = this.socket.makeRef();
    this.socket.send([this.joinRef, this.joinRef, this.topic, "phx_join", this.payload]);
  }

  errored() {
    if (this.state !== "left") this.state = "errored";
  }

  push(event, payload) {
    if (this.state === "joined" && this.socket.isOpen()) {
      this.socket.send([this.joinRef, this.socket.makeRef(), this.topic, event, payload]);
    } else if (this.state !== "left" && this.buffer.length < MAX_BUFFERED) {
      this.buffer.push([event, payload]);
    }
  }

  leave() {
    if (this.state === "joined") this.socket.send([this.joinRef, this.socket.makeRef(), this.topic, "phx_leave", {}]);
    this.state = "left";
    this.socket.channels.delete(this);
  }

  receive(joinRef, ref, event, payload) {
    if (joinRef !== this.joinRef) return; // a reply to an earlier join
    if (event === "phx_reply" && ref === this.joinRef && this.state === "joining") {
      if (payload.status === "ok") {
        this.state = "joined";
        this.tries = 0;
        const pending = this.buffer;
        this.buffer = [];
        pending.forEach(([e, p]) => this.push(e, p));
      } else {
        this.rejoinLater();
      }
    } else if (event === "phx_error") {
      this.rejoinLater();
    } else if (event === "phx_close") {
      this.state = "left"; // the server closed it (e.g. a revoked key): do not rejoin
      this.socket.channels.delete(this);
    }
  }

  rejoinLater() {
    this.state = "errored";
    setTimeout(guard(() => this.state === "errored" && this.join()), retryAfter(this.tries++));
  }
}

function connect() {
  if (!config.apiKey) console.warn("[vidmetrics]: Set apiKey using `Metrics.config = {apiKey: 'your_key'}`");
  if (!socket) {
    socket = new Socket(config.socketPath || "ws://localhost:3000/socket", { source_url: page(), key: config.apiKey });
    socket.connect();
  }
  return socket;
}

// -- one monitored video ---------------------------------------------------------------------
const MEDIA_EVENTS = ["play", "playing", "pause", "timeupdate", "waiting", "seeking", "seeked",
  "ended", "error", "ratechange", "resize"];

export class Metrics {
  static set config(value) {
    config.socketPath = value && value.socketPath;
    config.apiKey = value && value.apiKey;
  }

  constructor(...args) {
    this.VERSION = "1.0.0";
    this.handler = guard((e) => this.on(e));
    this.exit = guard(() => this.leaving());
    try {
      if (args.length <= 1) {
        console.error("[vidmetrics]: Metrics needs a video (a selector, an element or an hls.js instance) and a metadata object.");
        return;
      }
      const [target, second, third, fourth] = args;
      if (typeof target === "string") {
        this.querySelectorable = target;
        this.identifier = second;
      }
      if (target instanceof HTMLMediaElement) this.video = target;
      else if (target && typeof target === "object") this.hls = target;
      if (args.length === 2 && typeof second === "object") this.metadata = second;
      else this.identifier = second;
      if (third) this.metadata = third;
      if (fourth) this.session_data = fourth;
    } catch (error) {
      console.error("[vidmetrics]:", error);
    }
  }

  monitor() {
    try {
      if (this.channel) return this;
      const video = this.video || (this.querySelectorable ? document.querySelector(this.querySelectorable) : this.hls && this.hls.media);
      if (!video) {
        console.error(`[vidmetrics]: ${this.querySelectorable} is not a valid reference to a HTMLVideoElement.`);
        return this;
      }
      this.video = video;
      this.reset();
      this.channel = new Channel(connect(), sessionTopic(), {
        identifier: this.identifier, metadata: this.metadata, session_data: this.session_data,
        source_url: page(), key: config.apiKey,
      });
      this.channel.join();
      MEDIA_EVENTS.forEach((name) => video.addEventListener(name, this.handler, name === "error"));
      if (window.ResizeObserver) {
        this.resized = new ResizeObserver(guard(() => this.channel && this.rendition()));
        this.resized.observe(video);
      }
      this.channel.socket.leaving.add(this.exit);
      this.catchUp();
    } catch (error) {
      console.error("[vidmetrics]:", error);
    }
    return this;
  }

  demonitor() {
    try {
      if (!this.channel) return;
      MEDIA_EVENTS.forEach((name) => this.video.removeEventListener(name, this.handler, name === "error"));
      if (this.resized) this.resized.disconnect();
      this.channel.socket.leaving.delete(this.exit);
      this.channel.leave();
      this.channel = null;
    } catch (error) {
      console.error("[vidmetrics]:", error);
    }
  }

  // What happened before monitor(): a page may attach late (a module script, a tag manager,
  // a slow network), after the video failed, started or stalled. Report it once, from the
  // element's own state; a startup time we did not see start is unknown, not guessed.
  catchUp() {
    const v = this.video;
    if (v.error) return this.failure({ target: v });
    this.rendition();
    if (!v.paused) {
      this.requested = true; // requested before we saw it: no startup time
      const started = v.played.length > 0 || v.currentTime > 0;
      if (started) {
        this.started = true;
        this.lastTime = v.currentTime;
        this.send("play", { from: v.currentTime < 1 ? 0 : this.position() });
        this.last = "play";
        if (v.readyState < v.HAVE_FUTURE_DATA && !v.seeking) { // waiting for data: a stall
          this.stalledAt = now();
          this.send("rebuffering_start", { at: v.currentTime });
        }
      } else {
        this.send("play_request", {});
      }
    }
    // every <source> failed: the element has none to try and no error of its own. Checked
    // after this task, when the browser has begun selecting a source for a new element.
    setTimeout(guard(() => {
      if (this.channel && !this.failed && v.networkState === v.NETWORK_NO_SOURCE && !v.error
          && v.querySelector("source")) this.failure({ target: v, noSource: true });
    }), 0);
  }

  reset() {
    this.last = null; // "play" or "pause": what the play/pause events last said
    this.lastTime = undefined;
    this.requestedAt = null; // when playback was first requested
    this.requested = false; // playback was requested (maybe before monitor(): no time then)
    this.started = false; // the first frame has been shown
    this.stalledAt = null;
    this.seekingAt = null;
    this.failed = false;
    this.size = "";
  }

  send(name, fields) {
    const duration = this.video.duration;
    this.channel.push("event", { name, duration: Number.isFinite(duration) ? duration : undefined, ...fields });
  }

  position() {
    return this.video.currentTime.toFixed(2);
  }

  on(event) {
    const v = this.video;
    switch (event.type) {
      // what @maveio/metrics sends, exactly
      case "playing":
        this.endStall();
        this.seekingAt = null;
        if (!this.started) this.firstFrame();
        if (this.last === "play") break;
        this.send("play", { from: v.currentTime < 1 ? 0 : this.position() });
        this.last = "play";
        break;
      case "pause":
        this.endStall();
        if (v.readyState === 4 && this.last !== "pause") this.send("pause", { to: this.position() });
        this.last = "pause";
        break;
      case "timeupdate":
        if (v.ended) {
          this.lastTime = undefined;
          break;
        }
        if (this.lastTime !== undefined && !v.paused && Math.abs(v.currentTime - this.lastTime) > 0.5 && this.last !== "pause") {
          this.send("pause", { to: this.lastTime });
          this.last = "pause";
        }
        this.lastTime = v.currentTime;
        break;
      // quality of experience
      case "play":
        if (!this.requested) {
          this.requested = true;
          this.requestedAt = now();
          this.send("play_request", {});
        }
        break;
      case "waiting":
        if (this.started && this.seekingAt === null && this.stalledAt === null && !this.failed) {
          this.stalledAt = now();
          this.send("rebuffering_start", { at: v.currentTime });
        }
        break;
      case "seeking":
        this.endStall();
        this.seekingAt = now();
        this.send("seeking", { at: v.currentTime });
        break;
      case "seeked":
        if (this.seekingAt !== null) this.send("seeked", { ms: Math.round(now() - this.seekingAt), at: v.currentTime });
        break;
      case "ended":
        this.endStall();
        this.send("ended", { to: v.duration });
        break;
      case "error":
        this.failure(event);
        break;
      case "ratechange":
        this.send("ratechange", { pr: v.playbackRate });
        break;
      case "resize":
        this.rendition();
        break;
    }
  }

  // the rendition (intrinsic size) and the box it is shown in, in device pixels: sent when
  // either changes (the server derives the upscale, for the video quality score)
  rendition() {
    const v = this.video;
    if (!v.videoWidth) return;
    const ratio = window.devicePixelRatio || 1;
    const dw = Math.round(v.clientWidth * ratio), dh = Math.round(v.clientHeight * ratio);
    const size = `${v.videoWidth}x${v.videoHeight}@${dw}x${dh}`;
    if (size === this.size) return;
    this.size = size;
    const shown = dw > 0 && dh > 0 ? { dw, dh } : {};
    this.send("rendition", { width: v.videoWidth, height: v.videoHeight, ...shown });
  }

  // startup time: from the first play request to the first frame painted while playing
  firstFrame() {
    this.started = true;
    if (this.requestedAt === null) return; // playing without a request we saw: unknown
    const requested = this.requestedAt;
    let sent = false;
    const report = guard((at) => {
      if (sent) return;
      sent = true;
      this.send("first_frame", { ms: Math.round(Math.max(0, at - requested)) });
    });
    const playingAt = now();
    if (this.video.requestVideoFrameCallback) {
      this.video.requestVideoFrameCallback((t) => report(Math.max(playingAt, Math.min(t, now()))));
      setTimeout(() => report(playingAt), FIRST_FRAME_WAIT_MS); // hidden tabs paint nothing
    } else {
      report(playingAt);
    }
  }

  endStall() {
    if (this.stalledAt === null) return;
    this.send("rebuffering_end", { ms: Math.round(now() - this.stalledAt), at: this.video.currentTime });
    this.stalledAt = null;
  }

  failure(event) {
    const v = this.video;
    // with <source> children the errors fire on them; the video fails when the last does
    const fromSource = event.target !== v;
    if (this.failed || (fromSource && event.target.tagName !== "SOURCE")) return; // a <track>
    let next = fromSource ? event.target.nextElementSibling : null;
    while (next && next.tagName !== "SOURCE") next = next.nextElementSibling;
    if (next) return; // the browser tries the next source
    this.failed = true;
    this.endStall();
    const code = v.error ? v.error.code : fromSource || event.noSource ? 4 : 0;
    this.send("playback_failure", { code, at: v.currentTime });
  }

  leaving() {
    if (!this.channel) return;
    this.endStall();
    this.send("exit", this.last === "play" && !this.video.paused ? { to: this.position() } : {});
  }
}

export default Metrics;
