// The console's only way to the server: the same /v1 JSON API the CLI uses.
//
// Reads need no token. Actions send the bearer token the operator entered once for this tab
// (sessionStorage: it goes when the tab closes, and other tabs do not see it). Without it the
// console is read-only, and every action button says so.
//
// Live data is polled, not pushed: cms-api runs gunicorn's sync workers, where a server-sent
// event stream would hold a whole worker for as long as a tab stays open (five tabs would
// take every worker of a 2-core controller). A poll is one short request that any worker
// answers and then frees. See the README's "The console".

const TOKEN_KEY = "cms-token";

export class ApiError extends Error {
  constructor(status, title, description) {
    super(description || title || `HTTP ${status}`);
    this.status = status;
    this.title = title || `HTTP ${status}`;
    this.description = description || "";
  }
}

export class Disconnected extends Error {}

export const token = {
  get() { return sessionStorage.getItem(TOKEN_KEY) || ""; },
  set(v) { v ? sessionStorage.setItem(TOKEN_KEY, v) : sessionStorage.removeItem(TOKEN_KEY); notify(); },
};

const listeners = new Set();
export function onTokenChange(fn) { listeners.add(fn); return () => listeners.delete(fn); }
function notify() { for (const fn of listeners) fn(token.get()); }

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  const t = token.get();
  if (method !== "GET" && t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, cache: "no-store",
                               body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    connection.failed(`${path}: ${e.message}`);
    throw new Disconnected(`the API did not answer (${e.message})`);
  }
  let data = null;
  const text = await resp.text();
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (resp.status >= 500 && resp.status !== 501) {
    // 502/503 are the API speaking (a host is down); a proxy's 502 has no JSON body.
    if (!data) { connection.failed(`${path}: HTTP ${resp.status}`); throw new Disconnected(`HTTP ${resp.status}`); }
  }
  connection.ok();
  if (!resp.ok) {
    throw new ApiError(resp.status, data && data.title, data && data.description);
  }
  return data;
}

export const api = {
  get: (path) => request("GET", path),
  post: (path, body) => request("POST", path, body === undefined ? {} : body),
  del: (path) => request("DELETE", path),
};

// -- connection state: "disconnected" with backoff, recovering by itself ----------------------

export const connection = {
  state: "connecting",
  detail: "",
  lastOk: 0,
  subs: new Set(),
  ok() {
    this.lastOk = Date.now();
    if (this.state !== "connected") { this.state = "connected"; this.detail = ""; this.emit(); }
  },
  failed(detail) {
    this.detail = detail;
    if (this.state !== "disconnected") { this.state = "disconnected"; }
    this.emit();
  },
  subscribe(fn) { this.subs.add(fn); fn(this); return () => this.subs.delete(fn); },
  emit() { for (const fn of this.subs) fn(this); },
};

// A poller runs fn every `every` ms. When the API does not answer it waits 1, 2, 4 ... up to
// 30 s between tries (shown as "retrying in N s"), and goes back to `every` after a success.
export class Poller {
  constructor(fn, every) {
    this.fn = fn;
    this.every = every;
    this.backoff = 0;
    this.timer = null;
    this.stopped = false;
    this.nextAt = 0;
  }
  start() { this.run(); return this; }
  stop() { this.stopped = true; clearTimeout(this.timer); Poller.all.delete(this); }
  // Run now (after an action, or a new range): at once when idle, else right after the run in flight.
  now() {
    if (this.running) { this.again = true; return; }
    clearTimeout(this.timer);
    this.run();
  }
  async run() {
    if (this.stopped) return;
    Poller.all.add(this);
    this.running = true;
    let wait = this.every;
    try {
      await this.fn();
      this.backoff = 0;
      if (this.errShown) { this.errShown = false; showPollError(null); }
    } catch (e) {
      if (e instanceof Disconnected) {
        this.backoff = Math.min(30000, this.backoff ? this.backoff * 2 : 1000);
        wait = this.backoff;
      } else {
        this.errShown = true;
        showPollError(e);
      }
    }
    this.running = false;
    if (this.stopped) return;
    if (this.again && !this.backoff) { this.again = false; wait = 0; }
    this.nextAt = Date.now() + wait;
    this.timer = setTimeout(() => this.run(), wait);
  }
  static all = new Set();
  static retryIn() {
    let soonest = Infinity;
    for (const p of Poller.all) if (p.backoff) soonest = Math.min(soonest, p.nextAt);
    return soonest === Infinity ? null : Math.max(0, Math.ceil((soonest - Date.now()) / 1000));
  }
}

let pollErrorSink = null;
export function setPollErrorSink(fn) { pollErrorSink = fn; }
function showPollError(e) { if (pollErrorSink) pollErrorSink(e); }
