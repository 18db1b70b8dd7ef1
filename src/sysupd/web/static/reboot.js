// The scheduled reboot: a banner with a countdown for everyone (and Cancel for administrators),
// and the Reboot card's form to schedule one.

import { describeError } from "./api.js";
import { $, formatDuration, say, show } from "./util.js";

export class RebootPanel {
  #session;
  #plan = null;
  #due = 0;
  #ticker = null;

  constructor(session) {
    this.#session = session;
    $("reboot-cancel").addEventListener("click", () => this.#cancel());
    $("reboot-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.#schedule();
    });
  }

  /** Show or hide the controls for this user (the banner itself is for everyone). */
  allow({ schedule, cancel }) {
    show($("reboot-section"), schedule);
    show($("reboot-cancel"), cancel);
  }

  async refresh() {
    try {
      const reply = await this.#session.call("sys", "reboot_time");
      this.#apply(reply.reboot_scheduled ? reply : null);
    } catch (error) {
      say($("reboot-message"), describeError(error), "error");
    }
  }

  /** A sys/reboot event: a new plan, or {"reboot_scheduled": false} when it was cancelled. */
  onEvent(args) {
    const wasPlanned = this.#plan !== null;
    this.#apply(args.reboot_scheduled === false ? null : args);
    if (!this.#plan && wasPlanned) say($("reboot-live"), "The scheduled reboot was cancelled.");
  }

  /** The socket dropped: a countdown from before says nothing certain any more. */
  stop() {
    clearInterval(this.#ticker);
    this.#ticker = null;
  }

  #apply(plan) {
    clearInterval(this.#ticker);
    this.#ticker = null;
    this.#plan = plan;
    show($("reboot-banner"), plan !== null);
    if (!plan) return;
    // Counted on this browser's clock from the seconds the service gave, so that a clock that
    // differs from the appliance's does not skew the countdown; reboot_time is shown as it is.
    this.#due = Date.now() + Number(plan.reboot_delay_seconds) * 1000;
    const at = new Date(plan.reboot_time);
    say($("reboot-at"), Number.isNaN(at.getTime()) ? "" : `(at ${at.toLocaleTimeString()})`);
    say($("reboot-live"), `${this.#kind()} scheduled in ${formatDuration(plan.reboot_delay_seconds)}.`);
    this.#tick();
    this.#ticker = setInterval(() => this.#tick(), 1000);
  }

  #kind() {
    return this.#plan?.reboot_type === "poweroff" ? "Power-off" : "Reboot";
  }

  #tick() {
    const left = Math.max(0, Math.ceil((this.#due - Date.now()) / 1000));
    const text = left > 0 ? `${this.#kind()} in ${formatDuration(left)}` : `${this.#kind()} now…`;
    const countdown = $("reboot-countdown");
    countdown.textContent = text;
    countdown.dataset.secondsLeft = String(left);
    const starting = this.#session.status.rebootRequired && this.#plan?.reboot_type !== "poweroff";
    $("reboot-why").textContent = starting ? "It starts the newly installed version." : "";
  }

  async #cancel() {
    const button = $("reboot-cancel");
    button.disabled = true;
    try {
      const reply = await this.#session.call("sys", "reboot_stop");
      if (reply.result === "success") {
        this.#apply(null);
        say($("reboot-live"), "The scheduled reboot was cancelled.");
        say($("reboot-message"), "The scheduled reboot was cancelled.", "ok");
      } else {
        this.#apply(null);
        this.#session.notify(reply.result ?? "The reboot could not be cancelled");
      }
    } catch (error) {
      this.#session.notify(describeError(error));
    } finally {
      button.disabled = false;
    }
  }

  async #schedule() {
    const message = $("reboot-message");
    const delay = Number($("reboot-delay").value);
    if (!Number.isInteger(delay) || delay < 0) {
      say(message, "The delay must be a whole number of seconds, 0 or more.", "error");
      $("reboot-delay").focus();
      return;
    }
    const poweroff = $("reboot-poweroff").checked;
    try {
      const reply = await this.#session.call("sys", "reboot", { delay_seconds: delay, poweroff });
      this.#apply(reply);
      say(message, `${this.#kind()} scheduled in ${formatDuration(delay)}.`, "ok");
    } catch (error) {
      say(message, describeError(error), "error");
    }
  }
}
