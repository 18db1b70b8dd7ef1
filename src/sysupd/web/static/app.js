// The page's entry point: logging in (and in again by itself after the socket drops), which
// controls this user gets, and routing the service's events to the cards.
//
// Sessions: the token is kept in sessionStorage, so each tab has its own chain of tokens (every
// rpc/auth_token spends the token it is given and returns the next one). Tokens survive a clean
// restart of the service, which is how a "reboot" into a new slot looks from here.

import { ApiError, Connection, ConnectionLost, describeError } from "./api.js";
import { RebootPanel } from "./reboot.js";
import { SettingsPanel } from "./settings.js";
import { StatusPanel } from "./status.js";
import { UpdatePanel } from "./update.js";
import { $, logLines, say, show } from "./util.js";

const TOKEN_KEY = "sysupd.token";
const USER_KEY = "sysupd.user";
const SESSION_ENDED = "Your session has ended; please log in again.";
const LOGIN_DEADLINE_CLOSE = 1008; // the service closes a socket that did not log in in time

class Session {
  constructor() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.conn = new Connection(`${scheme}//${location.host}/websocket`);
    /** Logged in on the socket that is open now (calls may be made). */
    this.ready = false;
    /** The person logged in, across reconnects: {name}; null when logged out. */
    this.user = null;
    this.calls = new Set();
    this.status = new StatusPanel(this, (status) => this.update.showStatus(status));
    this.update = new UpdatePanel(this, () => this.status.refresh());
    this.reboot = new RebootPanel(this);
    this.settings = new SettingsPanel(this);
  }

  start() {
    this.conn.addEventListener("open", () => this.#onOpen());
    this.conn.addEventListener("close", (event) => this.#onClose(event.detail));
    this.conn.addEventListener("event", (event) => this.#onEvent(event.detail));
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.#logIn();
    });
    $("logout").addEventListener("click", () => this.#logOut());
    $("log-refresh").addEventListener("click", () => this.refreshLog());
    $("notice-dismiss").addEventListener("click", () => show($("notice"), false));
    const name = sessionStorage.getItem(USER_KEY);
    if (sessionStorage.getItem(TOKEN_KEY) && name) {
      // A reload of a logged-in tab: log in again with the token.
      this.user = { name };
      this.conn.persistent = true;
      this.#setConn("connecting", "Connecting…");
      this.#showApp();
      this.conn.open().catch(() => this.#offline());
    } else {
      this.#showLogin("");
    }
  }

  /** Whether this user may make `call` ("namespace/name"), as rpc/query listed. */
  can(call) {
    return this.calls.has(call);
  }

  /** A call on the logged-in socket; a 401 means the session ended: back to the login form. */
  async call(namespace, name, args = {}) {
    if (!this.ready) throw new ConnectionLost("Not connected to the service; reconnecting…");
    try {
      return await this.conn.call(namespace, name, args);
    } catch (error) {
      if (error instanceof ApiError && error.code === "401" && this.user) this.#endSession(SESSION_ENDED);
      throw error;
    }
  }

  /** Tell the person something went wrong, where no card has a better place for it. */
  notify(text) {
    show($("notice"), Boolean(text));
    say($("notice-text"), text);
  }

  async refreshLog() {
    try {
      const reply = await this.call("sys", "middleware_log");
      const view = $("service-log");
      view.textContent = logLines(reply.log).join("\n");
      view.scrollTop = view.scrollHeight;
      say($("log-message"), `Loaded at ${new Date().toLocaleTimeString()}.`);
    } catch (error) {
      say($("log-message"), describeError(error), "error");
    }
  }

  async #logIn() {
    const username = $("login-user").value;
    const password = $("login-pass").value;
    const problem = $("login-error");
    if (!username || !password) {
      say(problem, "Enter your user name and password.", "error");
      $(username ? "login-pass" : "login-user").focus();
      return;
    }
    const button = $("login-submit");
    button.disabled = true;
    button.textContent = "Logging in…";
    say(problem, "");
    try {
      await this.conn.open();
      const reply = await this.conn.call("rpc", "auth", { username, password });
      $("login-pass").value = "";
      await this.#loggedIn(reply, username);
    } catch (error) {
      say(problem, loginProblem(error), "error");
      $("login-pass").select();
    } finally {
      button.disabled = false;
      button.textContent = "Log in";
    }
  }

  async #onOpen() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token || !this.user) return; // a socket opened for a password login
    this.#setConn("connecting", "Logging in again…");
    try {
      const reply = await this.conn.call("rpc", "auth_token", { token });
      await this.#loggedIn(reply, this.user.name);
    } catch (error) {
      if (error instanceof ApiError && error.code === "401") this.#endSession(SESSION_ENDED);
      else if (error instanceof ApiError) this.#endSession(loginProblem(error));
      // ConnectionLost: the socket dropped again, and it reconnects by itself.
    }
  }

  #onClose({ code }) {
    this.ready = false;
    this.status.stop();
    if (!this.user) {
      if (code !== LOGIN_DEADLINE_CLOSE) this.#setConn("idle", "Not connected");
      return;
    }
    this.#offline();
  }

  #offline() {
    this.#setConn("offline", "Reconnecting…");
    show($("conn-banner"), true);
    say($("conn-banner-detail"), "This page logs in again by itself when the service is back.");
  }

  #onEvent(frame) {
    if (!this.ready) return;
    if (frame.name === "sys/update_now") this.update.onEvent(frame.args ?? {});
    else if (frame.name === "sys/reboot") this.reboot.onEvent(frame.args ?? {});
  }

  async #loggedIn(reply, name) {
    const [token] = reply.args ?? [];
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(USER_KEY, name);
    this.user = { name };
    this.ready = true;
    this.conn.persistent = true;
    show($("conn-banner"), false);
    this.#setConn("online", "Connected");
    this.#showApp();
    await this.#load();
  }

  /** Everything the cards show, read again (after each login, so also after a reconnect). */
  async #load() {
    this.update.reset();
    this.notify("");
    try {
      const names = await this.call("rpc", "query");
      const listed = Object.entries(names).filter(([, list]) => Array.isArray(list));
      this.calls = new Set(listed.flatMap(([ns, list]) => list.map((name) => `${ns}/${name}`)));
    } catch (error) {
      this.notify(describeError(error));
      return;
    }
    this.#allow();
    const work = [this.status.refresh(true), this.reboot.refresh(), this.update.refreshAvailable()];
    if (this.can("sys/list_config") && this.can("sys/set_config")) work.push(this.settings.refresh());
    if (this.can("sys/middleware_log")) work.push(this.refreshLog());
    await Promise.all(work);
  }

  /** Show each control only to those the service lets use it; the rest see status only. */
  #allow() {
    show($("update-controls"), this.can("sys/update_now"));
    show($("upload-form"), this.can("sys/upload_file"));
    show($("check-button"), this.can("sys/update_check"));
    this.reboot.allow({ schedule: this.can("sys/reboot"), cancel: this.can("sys/reboot_stop") });
    show($("settings-section"), this.can("sys/list_config") && this.can("sys/set_config"));
    show($("log-section"), this.can("sys/middleware_log"));
    const role = this.can("sys/set_config") ? "administrator" : "user";
    say($("user-name"), `${this.user.name} (${role})`);
  }

  #logOut() {
    this.conn.notify("rpc", "auth_clear"); // no reply: the service ends the token and the socket
    this.status.forget();
    this.#endSession("You have logged out.");
  }

  #endSession(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    this.ready = false;
    this.user = null;
    this.calls = new Set();
    this.conn.persistent = false;
    this.status.stop();
    this.reboot.stop();
    this.#showLogin(message);
  }

  #showLogin(message) {
    const loggedInOnly = ["app-section", "whoami", "conn-banner", "reboot-banner"];
    for (const id of [...loggedInOnly, "rollback-banner", "new-version-banner"]) show($(id), false);
    show($("login-section"), true);
    say($("login-notice"), message);
    const known = sessionStorage.getItem(USER_KEY);
    if (known && !$("login-user").value) $("login-user").value = known;
    $(known ? "login-pass" : "login-user").focus();
  }

  #showApp() {
    show($("login-section"), false);
    show($("app-section"), true);
    show($("whoami"), true);
    say($("user-name"), this.user?.name ?? "");
  }

  #setConn(state, text) {
    const pill = $("conn-state");
    pill.dataset.state = state;
    pill.textContent = text;
  }
}

function loginProblem(error) {
  if (error instanceof ApiError && error.code === "401") {
    return `Login failed: ${error.details || error.reason}`;
  }
  if (error instanceof ApiError && error.code === "429") return `Locked out: ${error.details}`;
  if (error instanceof ConnectionLost) return `${error.message}. Is the service running?`;
  return describeError(error);
}

const session = new Session();
session.start();

// For people debugging and for the browser tests: make a call as the page's controls do; an
// error is shown on the page (and returned).
window.sysupd = Object.freeze({
  async call(namespace, name, args = {}) {
    try {
      return { ok: true, reply: await session.call(namespace, name, args) };
    } catch (error) {
      session.notify(describeError(error));
      return { ok: false, error: describeError(error) };
    }
  },
});
