// The console's page. App text (names, log lines, notifications) is hostile: it is
// only ever put on the page with textContent, never parsed as HTML.
"use strict";

const state = { csrf: null, appId: null, apps: [], source: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function show(text, ok) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = ok ? "message ok" : "message";
  box.hidden = !text;
}

async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["X-Estarter-CSRF"] = state.csrf || "";
  const resp = await fetch(path, { method, headers, body, credentials: "same-origin" });
  if (resp.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.error || resp.statusText);
  return data;
}

async function act(label, method, path, body) {
  try {
    await api(method, path, body);
    show(label + ": done", true);
    if (state.appId) loadApp();
  } catch (e) {
    show(label + ": " + e.message, false);
  }
}

const seg = (s) => encodeURIComponent(s);

function fmtDuration(sec) {
  if (sec === null || sec === undefined) return "-";
  sec = Math.floor(sec);
  const h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = sec % 60;
  return h ? `${h}h${m}m` : m ? `${m}m${s}s` : `${s}s`;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmtExit(exit) {
  if (!exit) return "-";
  return `${exit.reason} (${exit.code})${exit.detail ? ": " + exit.detail : ""}`;
}

function actionButtons(row) {
  const live = ["starting", "running", "restarting", "stopping"].includes(row.state);
  const id = row.appId;
  const buttons = [];
  const add = (name, label, enabled, confirmText) => {
    const b = el("button", { type: "button", class: "act-" + name, disabled: !enabled }, label);
    b.addEventListener("click", () => {
      if (confirmText && !window.confirm(confirmText)) return;
      act(`${label} ${id}`, "POST", `/api/apps/${seg(id)}/${name}`);
    });
    buttons.push(b);
  };
  add("launch", "Launch", !live);
  add("stop", "Stop", live);
  add("restart", "Restart", true);
  add("uninstall", "Uninstall", row.installed, `Uninstall ${id} and delete its data?`);
  return buttons;
}

function renderApps(apps) {
  state.apps = apps;
  const body = document.querySelector("#apps tbody");
  const rows = apps.map((r) => {
    const link = el("a", { href: "/app/" + seg(r.appId) }, r.name || r.appId);
    return el("tr", { "data-app": r.appId },
      el("td", { class: "name" }, link),
      el("td", {}, r.appId),
      el("td", {}, r.version || "-"),
      el("td", {}, r.runtime || "-"),
      el("td", { class: "state " + r.state }, r.state),
      el("td", { class: "pid" }, r.pid ?? "-"),
      el("td", {}, r.node || "-"),
      el("td", {}, r.restarts ?? 0),
      el("td", {}, fmtDuration(r.uptime)),
      el("td", {}, r.cpuPercent === null || r.cpuPercent === undefined ? "-" : r.cpuPercent),
      el("td", {}, fmtBytes(r.memoryBytes)),
      el("td", { class: "exit" }, fmtExit(r.exit)),
      el("td", {}, ...actionButtons(r)));
  });
  body.replaceChildren(...rows);
  if (state.appId) {
    const row = apps.find((a) => a.appId === state.appId);
    const actions = document.getElementById("app-actions");
    if (row) {
      actions.replaceChildren(el("span", { class: "state " + row.state, id: "app-state" },
        row.state), " ", ...actionButtons(row));
    }
  }
}

function renderPending(pending) {
  const list = document.getElementById("prompt-list");
  list.replaceChildren(...pending.map((p) => {
    const grant = el("button", { type: "button", class: "prompt-grant" }, "Grant");
    const deny = el("button", { type: "button", class: "prompt-deny" }, "Deny");
    const path = `/api/apps/${seg(p.appId)}/permissions/${seg(p.permission)}`;
    grant.addEventListener("click", () => act(`grant ${p.permission}`, "POST", path + "/grant"));
    deny.addEventListener("click", () => act(`deny ${p.permission}`, "POST", path + "/deny"));
    return el("li", { "data-app": p.appId, "data-permission": p.permission },
      el("strong", {}, p.appId), " asks for ", el("code", {}, p.permission),
      p.reason ? el("span", {}, ": " + p.reason) : null, " ", grant, deny);
  }));
  document.getElementById("prompts").hidden = pending.length === 0;
}

function addNote(n) {
  const list = document.getElementById("notes");
  const when = new Date((n.time || 0) * 1000).toLocaleTimeString();
  list.prepend(el("li", { class: "note " + (n.level || "info") },
    el("span", { class: "hint" }, when + " "), el("strong", {}, n.appId || ""), ": ",
    el("b", {}, n.title || ""), " ", n.message || ""));
  while (list.children.length > 200) list.lastChild.remove();
}

function logLine(time, level, message, stream) {
  const ts = time ? new Date(time * 1000).toISOString().replace("T", " ").slice(0, 23) : "";
  return el("div", { class: "line " + (level || "info") },
    el("span", { class: "ts" }, ts + " "), el("span", { class: "stream" }, (stream || "app") + " "),
    el("span", { class: "lvl" }, (level || "info") + " "), message);
}

function appendLog(node) {
  const log = document.getElementById("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(node);
  while (log.children.length > 2000) log.firstChild.remove();
  if (atEnd) log.scrollTop = log.scrollHeight;
}

async function loadApp() {
  const id = state.appId;
  let data;
  try {
    data = await api("GET", `/api/apps/${seg(id)}`);
  } catch (e) { show(e.message, false); return; }
  const manifest = data.manifest || {};
  document.getElementById("app-title").textContent =
    `${manifest.name || id} (${id} ${manifest.version || ""})`;
  document.getElementById("manifest").textContent = JSON.stringify(manifest, null, 2);
  const host = (data.runtimeInfo || {}).host || {};
  document.getElementById("limits").textContent = host.limits
    ? JSON.stringify(host.limits, null, 2) : "(applied limits are shown while the app runs)";
  const perms = data.permissions || { requested: [], granted: [], pending: [] };
  const pendingNames = new Set(perms.pending.map((p) => p.permission));
  const body = document.querySelector("#permissions tbody");
  body.replaceChildren(...perms.requested.map((name) => {
    const granted = perms.granted.includes(name);
    const path = `/api/apps/${seg(id)}/permissions/${seg(name)}`;
    const buttons = [];
    const b = (cls, label, action) => {
      const btn = el("button", { type: "button", class: cls }, label);
      btn.addEventListener("click", () => act(`${label} ${name}`, "POST", `${path}/${action}`));
      buttons.push(btn);
    };
    if (granted) b("perm-revoke", "Revoke", "revoke");
    else b("perm-grant", "Grant", "grant");
    if (pendingNames.has(name)) b("perm-deny", "Deny", "deny");
    const label = granted ? "granted" : pendingNames.has(name) ? "pending" : "not granted";
    return el("tr", { "data-permission": name }, el("td", {}, name),
      el("td", { class: "perm-state" }, label), el("td", {}, ...buttons));
  }));
}

async function openApp(id) {
  state.appId = id;
  document.getElementById("apps-view").hidden = true;
  document.getElementById("app-view").hidden = false;
  await loadApp();
  try {
    const { lines, note } = await api("GET", `/api/apps/${seg(id)}/logs?lines=200`);
    const log = document.getElementById("log");
    log.replaceChildren(...lines.map((l) => el("div", { class: "line file" }, l)));
    // The last run's node is gone with its log: say so rather than show nothing.
    if (note) log.append(el("div", { class: "line note" }, note));
    log.scrollTop = log.scrollHeight;
  } catch (e) { show(e.message, false); }
}

function connect() {
  const url = "/api/events" + (state.appId ? "?app=" + seg(state.appId) : "");
  const source = new EventSource(url);
  state.source = source;
  const live = document.getElementById("live");
  source.onopen = () => { live.textContent = "live"; live.className = "live"; };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
  source.onmessage = (msg) => {
    const item = JSON.parse(msg.data);
    if (item.kind === "apps") renderApps(item.apps);
    else if (item.kind === "pending") {
      renderPending(item.pending);
      if (state.appId) loadApp();
    } else if (item.kind === "notification") addNote(item);
    else if (item.kind === "log" && item.appId === state.appId) {
      appendLog(logLine(item.time, item.level, item.message, item.stream));
    } else if (item.kind === "error") show(item.message, false);
  };
}

async function main() {
  const session = await api("GET", "/api/session");
  state.csrf = session.csrf;
  document.getElementById("logout").addEventListener("click", async () => {
    await api("POST", "/logout").catch(() => null);
    location.href = "/login";
  });
  document.getElementById("install-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = document.getElementById("install-file").files[0];
    if (!file) { show("choose a .app.zip or .eapp file first", false); return; }
    const form = new FormData();
    form.append("package", file, file.name);
    try {
      const row = await api("POST", "/api/install", form);
      show(`installed ${row.appId} ${row.version}`, true);
    } catch (e) { show("install " + e.message, false); }
  });
  const m = location.pathname.match(/^\/app\/([^/]+)$/);
  if (m) await openApp(decodeURIComponent(m[1]));
  const notes = await api("GET", "/api/notifications?limit=50");
  for (const n of notes) addNote(n);
  connect();
}

main().catch((e) => show(e.message, false));
