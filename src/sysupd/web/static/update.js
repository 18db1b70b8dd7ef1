// The Update card: the running update's progress and log (from sys/update_now events, or from
// sys/update_status for a page opened mid-update), and the three ways to start one: an upload,
// a URL on the local network, and the online update server.

import { ApiError, describeError } from "./api.js";
import {
  $, base64, formatBytes, formatDuration, isSafeUploadName, logLines, progressNumbers, renderLines, say,
  setProgress, show, sleep, withoutStamp,
} from "./util.js";

const PHASES = {
  download: "Downloading",
  verify: "Verifying the signed metadata",
  install: "Installing",
  switch: "Switching to the new slot",
};
const FALLBACK_NAME = "upload.bundle";
const STARTING = "The update is starting; its progress is shown above.";
const CHECK_WAIT_MS = 30000;
const CHECK_POLL_MS = 500;

/** How the engine's last result (sys/update_status last_result) reads, and its style. */
function lastResult(last) {
  if (!last) return ["", ""];
  const detail = last.detail ? `: ${last.detail}` : ".";
  switch (last.result) {
    case "installed":
      return [`Installed${last.version ? ` version ${last.version}` : ""}; reboot to start it.`, "ok"];
    case "success":
      return [`Update confirmed${detail}`, "ok"];
    case "failed":
      return [`The last update failed${detail}`, "error"];
    case "interrupted":
      return [`The last update was interrupted${detail}`, "error"];
    case "rolled back":
      return [`The last update was rolled back${detail}`, "error"];
    default:
      return [`${last.result}${detail}`, ""];
  }
}

export class UpdatePanel {
  #session;
  #live = false; // events of the current job arrived since the last (re)login
  #upload = null; // the XMLHttpRequest of an upload under way

  /** `onFinished()` is called after a job's final event (to refresh the status). */
  constructor(session, onFinished) {
    this.#session = session;
    this.onFinished = onFinished;
    $("upload-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.#uploadAndInstall();
    });
    $("upload-cancel").addEventListener("click", () => this.#upload?.abort());
    $("url-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.#installFromUrl();
    });
    $("check-button").addEventListener("click", () => this.#checkOnline());
    $("online-install").addEventListener("click", () =>
      this.updateNow({}, $("online-message")),
    );
  }

  /** After a (re)login: the next status shows the job, whatever events were seen before. */
  reset() {
    this.#live = false;
  }

  /** A sys/update_status reply (after a login or reconnect), unless events tell more now. */
  showStatus(status) {
    if (this.#live) return;
    const lines = logLines(status.update_status);
    renderLines($("update-log"), lines);
    if (status.update_running) {
      // Opened mid-update: the log so far; the next event brings the numbers.
      this.#panel(true);
      say($("update-phase"), "An update is running…");
      setProgress($("update-progress"), 0, 0);
      say($("update-numbers"), "");
      say($("update-details"), lines.length ? withoutStamp(lines[lines.length - 1]) : "");
      say($("update-result"), "");
      $("update-log-box").open = true;
    } else if (lines.length || status.last_result) {
      // At rest: what happened last, and its log (folded unless it needs a look).
      this.#panel(false);
      show($("update-progress"), false);
      say($("update-phase"), "Last update");
      const [words, kind] = lastResult(status.last_result);
      say($("update-result"), words, kind);
      say($("update-numbers"), "");
      say($("update-details"), "");
      $("update-log-box").open = kind === "error" && lines.length > 1;
    } else {
      show($("progress-panel"), false);
      show($("update-idle"), true);
    }
  }

  /** A sys/update_now event. */
  onEvent(args) {
    this.#live = true;
    const bar = $("update-progress");
    const lines = logLines(args.log ?? args.details);
    const log = $("update-log");
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    renderLines(log, lines);
    if (atEnd) log.scrollTop = log.scrollHeight; // follow the log unless the person scrolled up
    this.#panel(Boolean(args.update_running));
    if (args.update_running) {
      const where = args.phase === "install" && args.slot ? ` into slot ${args.slot}` : "";
      say($("update-phase"), `${PHASES[args.phase] ?? "Updating"}${where}…`);
      const numbers = progressNumbers(
        args.bytes_done, args.bytes_total, args.rate_bytes_s, args.seconds_left,
      );
      setProgress(bar, args.bytes_done, args.bytes_total, numbers);
      say($("update-numbers"), numbers);
      // (ext) progress: "installing into slot B: 40.0 MiB of 100 MiB, …" while the payload flows;
      // otherwise the last log line (details) says what happens.
      say($("update-details"), args.progress ?? withoutStamp(logLines(args.details).join(" ")));
      say($("update-result"), "");
      return;
    }
    const success = args.result === "success";
    const total = args.bytes_total || 1;
    setProgress(bar, success ? total : args.bytes_done, total);
    bar.classList.toggle("failed", !success);
    say($("update-phase"), success ? "Update installed" : "Update failed");
    say($("update-numbers"), args.bytes_total ? progressNumbers(args.bytes_done, args.bytes_total) : "");
    const reason = lines.length ? withoutStamp(lines[lines.length - 1]) : "no reason was given";
    say($("update-details"), "");
    if (success) {
      say($("update-result"), "Installed; reboot to start it.", "ok");
    } else {
      say($("update-result"), `Update failed: ${reason.replace(/^update failed: /, "")}`, "error");
    }
    $("update-log-box").open = true;
    for (const id of ["upload-message", "url-message", "online-message"]) {
      if ($(id).textContent === STARTING) say($(id), ""); // the result above says more now
    }
    this.onFinished();
  }

  /** sys/update_now with `args`, its answer shown in `where`. Returns whether it started. */
  async updateNow(args, where) {
    say(where, "Starting the update…", "busy");
    try {
      const reply = await this.#session.call("sys", "update_now", args);
      if (reply.result === "success") {
        say(where, STARTING, "ok");
        return true;
      }
      const more = reply.details ? `: ${reply.details}` : "";
      say(where, `${reply.error ?? "The update did not start"}${more}`, "error");
    } catch (error) {
      say(where, describeError(error), "error");
    }
    return false;
  }

  /** sys/updates_available, shown in the online box (also on login). */
  async refreshAvailable() {
    try {
      this.#showAvailable(await this.#session.call("sys", "updates_available"));
    } catch (error) {
      say($("online-message"), describeError(error), "error");
    }
  }

  #panel(running) {
    show($("progress-panel"), true);
    show($("update-progress"), true);
    show($("update-idle"), false);
    const bar = $("update-progress");
    if (running) bar.classList.remove("failed");
    $("progress-panel").classList.toggle("running", running);
  }

  async #uploadAndInstall() {
    const message = $("upload-message");
    const file = $("upload-file").files[0];
    if (!file) {
      say(message, "Choose a bundle file first.", "error");
      $("upload-file").focus();
      return;
    }
    if (this.#upload) return;
    const name = isSafeUploadName(file.name) ? file.name : FALLBACK_NAME;
    const renamed = name === file.name ? "" : ` (sent as ${FALLBACK_NAME})`;
    $("upload-submit").disabled = true;
    try {
      say(message, `Uploading ${file.name}${renamed}…`, "busy");
      const grant = await this.#session.call("sys", "upload_file");
      const stored = await this.#send(file, name, grant);
      say(message, `Uploaded ${stored.file_upload} (${formatBytes(stored.size)}).`, "ok");
      await this.updateNow({ file_upload: stored.file_upload }, message);
    } catch (error) {
      say(message, `The upload failed: ${describeError(error)}`, "error");
    } finally {
      $("upload-submit").disabled = false;
      show($("upload-cancel"), false);
    }
  }

  /** POST /upload of `file` with the one-time credentials, showing bytes, rate and time left. */
  #send(file, name, grant) {
    const bar = $("upload-progress");
    const numbers = $("upload-numbers");
    show($("upload-box"), true);
    show($("upload-cancel"), true);
    setProgress(bar, 0, file.size);
    say(numbers, progressNumbers(0, file.size));
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      this.#upload = xhr;
      const started = performance.now();
      xhr.open("POST", `/upload?filename=${encodeURIComponent(name)}`);
      xhr.setRequestHeader("Authorization", `Basic ${base64(`${grant.upload_user}:${grant.upload_pass}`)}`);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.upload.onprogress = (event) => {
        const total = event.lengthComputable ? event.total : file.size;
        const seconds = (performance.now() - started) / 1000;
        const rate = seconds > 0.2 && event.loaded > 0 ? event.loaded / seconds : null;
        const left = rate ? (total - event.loaded) / rate : null;
        const text = progressNumbers(event.loaded, total, rate, left);
        setProgress(bar, event.loaded, total, text);
        say(numbers, text);
      };
      xhr.onload = () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          body = null;
        }
        if (xhr.status === 200 && body?.result === "success") {
          const seconds = (performance.now() - started) / 1000;
          const sent = `${progressNumbers(body.size, body.size)} · sent in ${formatDuration(seconds)}`;
          say(numbers, `${sent} · SHA-256 ${body.sha256}`);
          resolve(body);
        }
        else if (body?.namespace === "error") reject(new ApiError(body.args));
        else reject(new Error(`the service answered HTTP ${xhr.status}`));
      };
      xhr.onerror = () => reject(new Error("the connection broke off during the upload"));
      xhr.onabort = () => reject(new Error("the upload was cancelled"));
      xhr.onloadend = () => {
        this.#upload = null;
      };
      xhr.send(file);
    });
  }

  async #installFromUrl() {
    const url = $("url-input").value.trim();
    if (!url) {
      say($("url-message"), "Enter the address of an update file.", "error");
      $("url-input").focus();
      return;
    }
    await this.updateNow({ fetch_url: url }, $("url-message"));
  }

  /** sys/update_check returns at once; the result shows in sys/updates_available when done. */
  async #checkOnline() {
    const message = $("online-message");
    const button = $("check-button");
    button.disabled = true;
    say(message, "Checking for updates…", "busy");
    try {
      const before = (await this.#session.call("sys", "updates_available")).last_checked;
      await this.#session.call("sys", "update_check");
      const deadline = Date.now() + CHECK_WAIT_MS;
      let reply;
      do {
        await sleep(CHECK_POLL_MS);
        reply = await this.#session.call("sys", "updates_available");
      } while (reply.last_checked === before && Date.now() < deadline);
      this.#showAvailable(reply);
      const slow = reply.last_checked === before;
      say(message, slow ? "The check takes long; this is the last completed one." : "");
    } catch (error) {
      say(message, describeError(error), "error");
    } finally {
      button.disabled = false;
    }
  }

  #showAvailable(reply) {
    const kind = reply.error ? "error" : reply.updates_available ? "ok" : "";
    say($("online-info"), reply.updates_info ?? "", kind);
    const checked = reply.last_checked ? `Last checked ${new Date(reply.last_checked).toLocaleString()}` : "";
    say($("online-checked"), checked);
    const install = $("online-install");
    show(install, Boolean(reply.updates_available));
    const size = reply.size ? ` (${formatBytes(reply.size)})` : "";
    install.textContent = reply.version ? `Install version ${reply.version}${size}` : "Install";
  }
}
