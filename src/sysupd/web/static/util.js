// Small helpers shared by the page's modules: DOM access, the service's escaped text, units.

/** The element with this id (every element the page uses has one). */
export const $ = (id) => document.getElementById(id);

/** Show or hide an element (the stylesheet makes [hidden] win over any display rule). */
export function show(element, visible) {
  element.hidden = !visible;
}

/** Set an element's text and a state class ("ok", "error", "busy" or none). */
export function say(element, text, kind = "") {
  element.textContent = text;
  element.classList.remove("ok", "error", "busy");
  if (kind) element.classList.add(kind);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const ENTITIES = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };

/** Undo the HTML escaping of the service's log text, in one pass (so "&amp;lt;" stays "&lt;"). */
export function decodeEntities(text) {
  return text.replace(/&(?:#x([0-9a-f]{1,6})|#([0-9]{1,7})|([a-z]{2,4}));/gi, (whole, hex, dec, name) => {
    if (hex || dec) {
      const code = Number.parseInt(hex || dec, hex ? 16 : 10);
      return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : whole;
    }
    return ENTITIES[name.toLowerCase()] ?? whole;
  });
}

/**
 * The lines of a log as the service sends it: HTML-escaped lines joined by "<br>".
 * The result is plain text, meant for textContent only: never for innerHTML.
 */
export function logLines(text) {
  if (!text) return [];
  return String(text).split("<br>").map(decodeEntities);
}

/**
 * Make a list element show `lines`, one <li> each. Lines already shown are kept, so a log that
 * grows gets only its new lines appended (and keeps its scroll position and selection).
 */
export function renderLines(list, lines) {
  const items = list.children;
  let same = 0;
  while (same < items.length && same < lines.length && items[same].textContent === lines[same]) {
    same += 1;
  }
  while (items.length > same) list.lastElementChild.remove();
  for (const line of lines.slice(same)) {
    const item = document.createElement("li");
    item.textContent = line;
    list.append(item);
  }
}

/** "12:04:05 update failed: x" -> "update failed: x" (the service stamps each job log line). */
export function withoutStamp(line) {
  return line.replace(/^\d\d:\d\d:\d\d /, "");
}

const UNITS = ["bytes", "KiB", "MiB", "GiB", "TiB"];

export function formatBytes(count) {
  let value = Number(count) || 0;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${value} ${value === 1 ? "byte" : "bytes"}`;
  return `${value.toFixed(value < 10 ? 2 : 1)} ${UNITS[unit]}`;
}

export function formatRate(bytesPerSecond) {
  return `${formatBytes(Math.round(bytesPerSecond))}/s`;
}

export function formatDuration(seconds) {
  if (seconds < 1) return "under 1 s";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ""}`;
  const minutes = Math.floor((s % 3600) / 60);
  return `${Math.floor(s / 3600)} h${minutes ? ` ${minutes} min` : ""}`;
}

/** "1.2 MiB of 3.0 MiB · 2.1 MiB/s · 1 s left", from whatever of it is known. */
export function progressNumbers(done, total, rate, secondsLeft) {
  const parts = [];
  if (total > 0) {
    const percent = Math.floor((100 * Math.min(done, total)) / total);
    parts.push(`${formatBytes(done)} of ${formatBytes(total)} (${percent} %)`);
  } else if (done > 0) {
    parts.push(formatBytes(done));
  }
  if (rate) parts.push(formatRate(rate));
  if (secondsLeft !== null && secondsLeft !== undefined) parts.push(`${formatDuration(secondsLeft)} left`);
  return parts.join(" · ");
}

/**
 * Show `done` of `total` on a <progress>: an indeterminate bar while the total is unknown.
 * `label` becomes aria-valuetext, so screen readers hear bytes rather than a bare fraction.
 */
export function setProgress(bar, done, total, label = "") {
  if (total > 0) {
    bar.max = total;
    bar.value = Math.min(done, total);
  } else {
    bar.removeAttribute("value");
  }
  if (label) bar.setAttribute("aria-valuetext", label);
  else bar.removeAttribute("aria-valuetext");
}

// The service's rule for upload names (core/uploadnames.py check_upload_name), checked here first so
// that an odd local file name is replaced rather than refused.
const REFUSED_CHARS = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/u;
const MAX_NAME_BYTES = 255;

export function isSafeUploadName(name) {
  return (
    typeof name === "string" &&
    name.length > 0 &&
    !REFUSED_CHARS.test(name) &&
    !name.includes("/") &&
    !name.includes("\\") &&
    !name.includes("..") &&
    !name.startsWith(".") &&
    name === name.trim() &&
    new TextEncoder().encode(name).length <= MAX_NAME_BYTES
  );
}

/** Base64 of the UTF-8 bytes of `text` (btoa alone takes only Latin-1). */
export function base64(text) {
  let binary = "";
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary);
}
