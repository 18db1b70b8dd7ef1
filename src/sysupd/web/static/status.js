// The System card and the banners about the running system: version, slot and boot status, a
// rollback (with the reason), and "Now running X in slot Y" once a reboot brought a new version.

import { describeError } from "./api.js";
import { $, show, say } from "./util.js";

const SEEN_KEY = "sysupd.seen";
// While the booted slot is being checked, look again soon; otherwise a slow keep-alive, which
// also keeps the session's token alive (it expires after 900 s without a request).
const SETTLING_POLL_MS = 1500;
const IDLE_POLL_MS = 60000;

const BOOT_WORDS = {
  starting: ["starting", "busy"],
  trial: ["on trial: checking the new slot", "busy"],
  good: ["good", "ok"],
  unhealthy: ["unhealthy: the health check fails", "error"],
  "rolled back": ["rolled back", "error"],
  failed: ["failed: the previous slot boots next", "error"],
};

export class StatusPanel {
  #session;
  #timer = null;

  /** `onStatus(status)` gets each sys/update_status reply (the update panel shows it). */
  constructor(session, onStatus) {
    this.#session = session;
    this.onStatus = onStatus;
    this.info = null;
    /** A new version is installed and waits for a reboot (from the last sys/update_status). */
    this.rebootRequired = false;
    $("status-refresh").addEventListener("click", () => this.refresh(true));
    $("new-version-dismiss").addEventListener("click", () => show($("new-version-banner"), false));
  }

  /** Read sys/info and sys/update_status and show them; `loud`: show errors in the notice. */
  async refresh(loud = false) {
    clearTimeout(this.#timer);
    this.#timer = null;
    try {
      const [info, status] = await Promise.all([
        this.#session.call("sys", "info"),
        this.#session.call("sys", "update_status"),
      ]);
      this.info = info;
      this.rebootRequired = Boolean(status.reboot_required);
      this.#showInfo(info, status);
      this.#showBanners(info, status);
      this.onStatus(status);
    } catch (error) {
      if (loud) this.#session.notify(describeError(error));
    }
    if (this.#session.ready) {
      const settling = ["starting", "trial"].includes(this.info?.boot_status);
      this.#timer = setTimeout(() => this.refresh(), settling ? SETTLING_POLL_MS : IDLE_POLL_MS);
    }
  }

  stop() {
    clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** Forget the version seen by this tab (on log out). */
  forget() {
    sessionStorage.removeItem(SEEN_KEY);
    show($("new-version-banner"), false);
    show($("rollback-banner"), false);
  }

  #showInfo(info, status) {
    say($("info-version"), info.system_version ?? "unknown");
    say($("info-slot"), info.slot ? `slot ${info.slot}` : "");
    const boot = String(info.boot_status ?? "");
    const [words, kind] = boot.startsWith("error:") ? [boot, "error"] : BOOT_WORDS[boot] ?? [boot, ""];
    const badge = $("info-boot");
    say(badge, words, kind);
    badge.dataset.status = boot;
    say($("info-reboot-required"), status.reboot_required ? "yes: a new version is installed" : "no");
    say($("info-system-id"), info.system_id ?? "");
    say($("info-middleware"), info.middleware_version ?? "");
  }

  #showBanners(info, status) {
    const last = status.last_result ?? null;
    const boot = String(info.boot_status ?? "");
    let title = "";
    if (boot === "failed") {
      title = "The new version failed its health check; the previous version starts at the next reboot.";
    } else if (boot === "rolled back" || last?.result === "rolled back") {
      title = `The update was rolled back: now running ${info.system_version} in slot ${info.slot}.`;
    } else if (boot.startsWith("error:")) {
      title = "The update system reports a problem.";
    }
    if (title) {
      say($("rollback-title"), title);
      const why = last?.detail || (boot.startsWith("error:") ? boot.slice(6).trim() : "");
      say($("rollback-reason"), why ? `Why: ${why}` : "");
    }
    show($("rollback-banner"), Boolean(title));

    // A version or slot other than the one this tab saw before: a reboot changed the system.
    const now = { version: info.system_version, slot: info.slot };
    let seen = null;
    try {
      seen = JSON.parse(sessionStorage.getItem(SEEN_KEY) || "null");
    } catch {
      seen = null;
    }
    if (seen && (seen.version !== now.version || seen.slot !== now.slot)) {
      say($("new-version-text"), `Now running ${now.version} in slot ${now.slot}`);
      show($("new-version-banner"), true);
    }
    sessionStorage.setItem(SEEN_KEY, JSON.stringify(now));
  }
}
