// The Settings card: a form built from sys/list_config; Save sends only what changed, in one
// sys/set_config, which the service checks all together (a 400 names the bad setting).

import { ApiError, describeError } from "./api.js";
import { $, say, show } from "./util.js";

// What each setting means, for people (from the service's settings registry). A setting the
// service adds later is shown with its name only.
const HELP = {
  product: "Product name; a release must name the same product.",
  trust_root: "Path of the release repository's root.json the device trusts.",
  update_server: "Base URL of the online release repository; empty for none.",
  update_check_interval_s: "Seconds between automatic update checks; 0 turns them off.",
  event_interval_s: "Seconds between progress events while an update runs.",
  auto_reboot: "Reboot by itself after a successful update.",
  auto_reboot_delay_s: "Seconds from a successful update to the automatic reboot.",
  fetch_networks: "Networks that update URLs must be in, one per line (e.g. 10.0.0.0/8).",
  max_upload_bytes: "Largest file accepted for upload, in bytes.",
  reboot_action: "What a reboot does: exec (restart the service in place), command, or exit.",
  reboot_command: "Command run by the 'command' reboot action.",
  poweroff_command: "Command run by the 'command' action for a power-off.",
  lockout_loopback: "Apply the failed-login lockout to this machine's own address too.",
  slots: "Slots as NAME:TYPE:PATH, one per line; empty for directories A and B.",
  bootloader: "Where the boot choice is kept: file (sysupd chooses) or grub.",
  grubenv: "The grubenv used by the grub bootloader.",
  boot_attempts: "Boots a new slot gets to pass its health check before it is abandoned.",
  health_check_command: "Command whose exit status 0 confirms a new slot; empty: starting is enough.",
  allow_downgrade: "Accept releases older than the installed ones.",
  factory_version: "Version of the first slot until an update replaces it.",
  slot_capacity_bytes: "The most a slot holds, in bytes; 0: no limit beyond the device's size.",
};

/** "auto_reboot_delay_s" -> "Auto reboot delay (s)". */
function title(name) {
  const unit = /_(s|bytes)$/.exec(name);
  const words = (unit ? name.slice(0, -unit[0].length) : name).replaceAll("_", " ");
  return `${words.charAt(0).toUpperCase()}${words.slice(1)}${unit ? ` (${unit[1]})` : ""}`;
}

export class SettingsPanel {
  #session;
  #values = {}; // as the service last listed them
  #readonly = new Set();

  constructor(session) {
    this.#session = session;
    $("settings-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.#save();
    });
    $("settings-undo").addEventListener("click", () => {
      this.#render();
      say($("settings-message"), "Changes undone.");
    });
  }

  async refresh() {
    try {
      const reply = await this.#session.call("sys", "list_config");
      this.#values = reply.config ?? {};
      // A later service may mark settings read-only; accept a list of names next to "config".
      this.#readonly = new Set(Array.isArray(reply.readonly) ? reply.readonly : []);
      this.#render();
    } catch (error) {
      say($("settings-error"), describeError(error), "error");
    }
  }

  #render() {
    const fields = $("settings-fields");
    fields.replaceChildren();
    say($("settings-error"), "");
    for (const [name, value] of Object.entries(this.#values)) {
      fields.append(this.#field(name, value));
    }
  }

  #field(name, value) {
    const id = `setting-${name}`;
    const box = document.createElement("div");
    box.className = "field";
    box.dataset.setting = name;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = title(name);
    let input;
    if (typeof value === "boolean") {
      box.classList.add("check-field");
      input = document.createElement("input");
      input.type = "checkbox";
      input.checked = value;
    } else if (Array.isArray(value)) {
      input = document.createElement("textarea");
      input.rows = Math.min(10, Math.max(2, value.length + 1));
      input.value = value.join("\n");
      input.spellcheck = false;
    } else {
      input = document.createElement("input");
      if (typeof value === "number") {
        input.type = "number";
        input.step = "any";
        input.inputMode = "decimal";
      } else {
        input.type = "text";
        input.spellcheck = false;
        input.autocomplete = "off";
      }
      input.value = value === null || value === undefined ? "" : String(value);
    }
    input.id = id;
    input.name = name;
    const help = document.createElement("p");
    help.className = "help";
    help.id = `${id}-help`;
    const wire = document.createElement("code");
    wire.className = "setting-name";
    wire.textContent = name; // as in the API, the configuration file and the docs
    help.append(wire, HELP[name] ? ` — ${HELP[name]}` : "");
    const error = document.createElement("p");
    error.className = "field-error";
    error.id = `${id}-error`;
    error.hidden = true;
    input.setAttribute("aria-describedby", `${help.id} ${error.id}`);
    if (this.#readonly.has(name)) {
      input.disabled = true;
      help.append(" Read-only: set in the configuration file.");
    }
    if (input.type === "checkbox") box.append(input, label, help, error);
    else box.append(label, input, help, error);
    return box;
  }

  /** What the form says for `name`, in the type the service listed it with. */
  #read(name) {
    const input = $(`setting-${name}`);
    const before = this.#values[name];
    if (typeof before === "boolean") return input.checked;
    if (Array.isArray(before)) {
      return input.value.split("\n").map((line) => line.trim()).filter((line) => line !== "");
    }
    if (typeof before === "number") {
      // Not a number: send the text as it is, and let the service say what is wrong with it.
      const text = input.value.trim();
      return text !== "" && Number.isFinite(Number(text)) ? Number(text) : input.value;
    }
    return input.value;
  }

  #changes() {
    const changes = {};
    for (const name of Object.keys(this.#values)) {
      if (this.#readonly.has(name)) continue;
      const value = this.#read(name);
      if (JSON.stringify(value) !== JSON.stringify(this.#values[name])) changes[name] = value;
    }
    return changes;
  }

  async #save() {
    const message = $("settings-message");
    const problem = $("settings-error");
    for (const box of $("settings-fields").children) this.#mark(box, "");
    say(problem, "");
    const changes = this.#changes();
    const names = Object.keys(changes);
    if (names.length === 0) {
      say(message, "Nothing to save: no setting was changed.");
      return;
    }
    $("settings-save").disabled = true;
    say(message, "Saving…", "busy");
    try {
      await this.#session.call("sys", "set_config", changes);
      say(message, `Saved: ${names.join(", ")}.`, "ok");
      await this.refresh();
    } catch (error) {
      say(message, "");
      say(problem, `Not saved, nothing was changed: ${describeError(error)}`, "error");
      // "setting 'auto_reboot_delay_s' must be …": point at the field as well.
      const named = error instanceof ApiError ? /setting '([^']+)'/.exec(error.details) : null;
      const selector = named ? `[data-setting="${CSS.escape(named[1])}"]` : null;
      const box = selector ? $("settings-fields").querySelector(selector) : null;
      if (box) {
        this.#mark(box, error.details);
        box.querySelector("input, textarea").focus();
      }
    } finally {
      $("settings-save").disabled = false;
    }
  }

  #mark(box, text) {
    const input = box.querySelector("input, textarea");
    const error = box.querySelector(".field-error");
    error.textContent = text;
    show(error, Boolean(text));
    if (text) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
}
