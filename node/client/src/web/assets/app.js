// The page of `quicnprotochat web`. Everything a server or another person wrote
// is put on the page as text (textContent), never as markup.
"use strict";

const TOKEN_KEY = "qpc-web-token";
// The token arrives in the fragment (never sent to a server) and is kept in
// sessionStorage, which belongs to this origin (host and port) alone.
(function takeToken() {
  const m = location.hash.match(/token=([0-9a-f]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, m[1]);
    history.replaceState(null, "", location.pathname);
  }
})();
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
const $ = (id) => document.getElementById(id);
let current = null;
let events = null;
// Messages that arrived in each group since it was last open, kept in this
// origin's localStorage so that a reload (or another tab) still shows them.
const UNREAD_KEY = "qpc-unread";
const unread = (() => {
  try {
    // No prototype: a group may be named "__proto__".
    const kept = JSON.parse(localStorage.getItem(UNREAD_KEY) || "{}");
    return Object.assign(Object.create(null), kept && typeof kept === "object" ? kept : {});
  } catch (_) {
    return Object.create(null);
  }
})();
function setUnread(group, n) {
  unread[group] = n;
  localStorage.setItem(UNREAD_KEY, JSON.stringify(unread));
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: Object.assign(
      { Authorization: "Bearer " + token() },
      body === undefined ? {} : { "Content-Type": "application/json" }
    ),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({ code: "invalid", message: res.statusText }));
  if (!res.ok) throw new Error(data.message || res.statusText);
  return data;
}

function showError(e) {
  const el = $("error");
  if (e) {
    el.textContent = String(e.message || e);
    el.hidden = false;
  } else {
    el.hidden = true;
  }
}

async function guarded(f) {
  try {
    showError(null);
    await f();
  } catch (e) {
    showError(e);
  }
}

function item(text, cls) {
  const li = document.createElement("li");
  li.textContent = text;
  if (cls) li.className = cls;
  return li;
}

// The connection as the resident client last heard: never assumed.
function showConnection(state, nextTryMs) {
  const el = $("connection");
  const words = {
    connected: "connected",
    connecting: "connecting…",
    signed_out: "not signed in",
    reconnecting:
      "disconnected, reconnecting" +
      (nextTryMs == null ? "" : " (next try in " + Math.ceil(nextTryMs / 1000) + " s)"),
  };
  el.textContent = words[state] || state;
  el.className = state === "connected" ? "ok" : "down";
  el.dataset.state = state;
}

async function refreshStatus() {
  const s = await api("GET", "/api/status");
  showConnection(s.connection, s.next_try_ms);
  $("signin").hidden = s.logged_in;
  $("app").hidden = !s.logged_in;
  $("me").textContent = s.logged_in ? s.username + " on " + s.server : "not signed in";
  if (s.logged_in) {
    listen();
    await refreshAll();
  }
}

async function refreshAll() {
  await refreshGroups();
  await refreshMessages();
  const devices = await api("GET", "/api/devices");
  $("devices").replaceChildren(...devices.map((d) => item(d.slice(0, 16) + "…")));
}

async function refreshGroups() {
  const groups = await api("GET", "/api/groups");
  $("groups").replaceChildren(
    ...groups.map((g) => {
      const li = item(g.name, g.name === current ? "active" : "");
      li.dataset.group = g.name;
      const n = unread[g.name] || 0;
      if (n > 0) {
        const badge = document.createElement("span");
        badge.className = "unread";
        badge.textContent = String(n);
        li.append(" ", badge);
      }
      li.addEventListener("click", () => guarded(() => select(g.name)));
      return li;
    })
  );
  const g = groups.find((g) => g.name === current);
  if (g) {
    $("group-info").textContent =
      "epoch " + g.epoch + " · " + g.suite + " · check " + g.check;
    $("members").replaceChildren(...g.members.map((m) => item(m)));
  }
}

async function refreshMessages() {
  if (current === null) return;
  const messages = await api(
    "GET",
    "/api/groups/" + encodeURIComponent(current) + "/messages?limit=200"
  );
  const list = $("messages");
  list.replaceChildren(
    ...messages.map((m) => {
      const li = document.createElement("li");
      const time = document.createElement("time");
      time.className = "time";
      time.dateTime = new Date(m.at_ms).toISOString();
      time.textContent = new Date(m.at_ms).toLocaleString();
      const sender = document.createElement("span");
      sender.className = "sender";
      sender.textContent = m.sender;
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = m.text;
      li.append(time, sender, text);
      if (m.delivery !== "done") {
        // Ours, still in the outbox (or refused): said, not hidden.
        li.classList.add(m.delivery);
        const state = document.createElement("span");
        state.className = "delivery";
        state.textContent =
          m.delivery === "pending" ? "pending: not sent yet" : "not sent: " + (m.failed || "");
        li.append(state);
      }
      return li;
    })
  );
  list.scrollTop = list.scrollHeight;
}

async function select(name) {
  current = name;
  setUnread(name, 0);
  askForNotifications();
  $("group-title").textContent = name;
  for (const id of ["message-input", "send", "invite-name", "invite"]) $(id).disabled = false;
  await refreshGroups();
  await refreshMessages();
}

function listen() {
  if (events) return;
  events = new EventSource("/api/events?token=" + encodeURIComponent(token()));
  events.addEventListener("changed", () => guarded(refreshAll));
  events.addEventListener("message", (e) => {
    const m = JSON.parse(e.data);
    if (m.group === current && !document.hidden) return;
    setUnread(m.group, (unread[m.group] || 0) + 1);
    notify(m);
  });
  events.addEventListener("notice", (e) => {
    $("notices").prepend(item(JSON.parse(e.data).line));
  });
  events.addEventListener("connection", (e) => {
    const c = JSON.parse(e.data);
    showConnection(c.state, c.next_try_ms);
  });
}

// Browser notifications for messages in a group that is not open: asked for
// once (the browser remembers the answer).
function askForNotifications() {
  if (!("Notification" in window) || Notification.permission !== "default") return;
  if (localStorage.getItem("qpc-notifications-asked")) return;
  localStorage.setItem("qpc-notifications-asked", "1");
  Notification.requestPermission();
}

function notify(m) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  // Title and body are text: a notification renders no markup.
  new Notification(m.sender + " in " + m.group, { body: m.text, tag: "qpc-" + m.group });
}

function credentials() {
  return { username: $("username").value.trim(), password: $("password").value };
}

$("register").addEventListener("click", () =>
  guarded(async () => {
    await api("POST", "/api/register", credentials());
    await refreshStatus();
  })
);
$("login").addEventListener("click", () =>
  guarded(async () => {
    await api("POST", "/api/login", credentials());
    await refreshStatus();
  })
);
$("create-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const name = $("new-group-name").value.trim();
    await api("POST", "/api/groups", { name });
    $("new-group-name").value = "";
    await select(name);
  });
});
$("send-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const input = $("message-input");
    const r = await api(
      "POST",
      "/api/groups/" + encodeURIComponent(current) + "/messages",
      { text: input.value }
    );
    input.value = "";
    if (r.undelivered.length) showError("not delivered to " + r.undelivered.join("; "));
    if (r.queued) showError("the node is unreachable: the message waits and goes out when it is back");
    await refreshMessages();
  });
});
$("invite-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const name = $("invite-name").value.trim();
    await api("POST", "/api/groups/" + encodeURIComponent(current) + "/invite", {
      usernames: [name],
    });
    $("invite-name").value = "";
    await refreshGroups();
  });
});

guarded(refreshStatus);
