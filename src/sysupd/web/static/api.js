// The page's one WebSocket to the service: calls matched to their replies by id, pushed events,
// and reconnection with backoff. Knows the envelope, not the calls (app.js handles logging in).

/** An error reply: {"namespace": "error", "args": {"code", "message", "details"}}. */
export class ApiError extends Error {
  constructor(args) {
    const { code = "500", message = "Error", details = "" } = args || {};
    super(details ? `${code} ${message}: ${details}` : `${code} ${message}`);
    this.name = "ApiError";
    this.code = String(code);
    this.reason = String(message);
    this.details = String(details);
  }
}

/** No connection (or it dropped before the reply came): the call may not have happened. */
export class ConnectionLost extends Error {
  constructor(message) {
    super(message);
    this.name = "ConnectionLost";
  }
}

/** What to tell the person about a failed call: the server's code, message and details. */
export function describeError(error) {
  if (error instanceof ApiError || error instanceof ConnectionLost) return error.message;
  return `Something went wrong in this page: ${error?.message ?? error}`;
}

const BACKOFF_MS = [500, 1000, 2000, 3000];
const CALL_TIMEOUT_MS = 60000;

/**
 * Events (EventTarget): "open"; "close" with detail {code, reason, opened}; "event" with the
 * event frame as detail. With `persistent` set, a dropped socket is opened again by itself,
 * 0.5 s after the drop, then 1, 2 and every 3 s while the service stays away.
 */
export class Connection extends EventTarget {
  #url;
  #ws = null;
  #opening = null;
  #pending = new Map();
  #nextId = 1;
  #attempt = 0;
  #timer = null;

  /** Reconnect after the socket drops (set while someone is logged in). */
  persistent = false;

  constructor(url) {
    super();
    this.#url = url;
  }

  get isOpen() {
    return this.#ws !== null && this.#ws.readyState === WebSocket.OPEN;
  }

  /** Resolves once the socket is open (at once if it is); rejects if it cannot be opened. */
  open() {
    if (this.isOpen) return Promise.resolve();
    if (this.#opening) return this.#opening;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#opening = new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.#url);
      } catch (error) {
        this.#opening = null;
        reject(new ConnectionLost(`Cannot connect to the service: ${error.message}`));
        return;
      }
      this.#ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this.#attempt = 0;
        this.#opening = null;
        resolve();
        this.dispatchEvent(new Event("open"));
      };
      ws.onmessage = (message) => this.#receive(message.data);
      ws.onclose = (closing) => {
        if (this.#ws === ws) this.#ws = null;
        this.#failPending("The connection to the service was lost before it answered");
        if (!opened) {
          this.#opening = null;
          reject(new ConnectionLost("Cannot reach the service"));
        }
        const detail = { code: closing.code, reason: closing.reason, opened };
        this.dispatchEvent(new CustomEvent("close", { detail }));
        if (this.persistent) this.#reconnectLater();
      };
    });
    return this.#opening;
  }

  /** Stop reconnecting and close the socket. */
  close() {
    this.persistent = false;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#ws?.close();
  }

  /** Send a call; resolves with the reply's args, rejects with ApiError or ConnectionLost. */
  async call(namespace, name, args = {}) {
    await this.open();
    const id = `p${this.#nextId++}`;
    return new Promise((resolve, reject) => {
      if (!this.isOpen) {
        reject(new ConnectionLost("The connection to the service was lost"));
        return;
      }
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new ConnectionLost(`The service did not answer ${namespace}/${name} in time`));
      }, CALL_TIMEOUT_MS);
      this.#pending.set(id, { resolve, reject, timer });
      this.#ws.send(JSON.stringify({ namespace, name, id, args }));
    });
  }

  /** Send a call that gets no reply (rpc/auth_clear). */
  notify(namespace, name, args = {}) {
    if (this.isOpen) this.#ws.send(JSON.stringify({ namespace, name, id: `n${this.#nextId++}`, args }));
  }

  #receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // not ours to fix; the service only sends JSON
    }
    if (frame.namespace === "event") {
      this.dispatchEvent(new CustomEvent("event", { detail: frame }));
      return;
    }
    const waiting = this.#pending.get(frame.id);
    if (!waiting) return;
    this.#pending.delete(frame.id);
    clearTimeout(waiting.timer);
    if (frame.namespace === "error") waiting.reject(new ApiError(frame.args));
    else waiting.resolve(frame.args ?? {});
  }

  #failPending(message) {
    for (const { reject, timer } of this.#pending.values()) {
      clearTimeout(timer);
      reject(new ConnectionLost(message));
    }
    this.#pending.clear();
  }

  #reconnectLater() {
    clearTimeout(this.#timer);
    const delay = BACKOFF_MS[Math.min(this.#attempt, BACKOFF_MS.length - 1)];
    this.#attempt += 1;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.open().catch(() => {}); // a failed attempt closes, and that schedules the next one
    }, delay);
  }
}
