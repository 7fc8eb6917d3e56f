// The room chat page: one room per URL hash (#lobby by default), spoken to
// with the official phoenix client over the `room:*` plugin's protocol:
//
//   join "room:<name>" {username}       -> reply {channel}, then presence_state
//                                          and presence_diff pushes
//   push "message:add" {message}        -> everyone gets
//                                          "room:<name>:new_message" {content, user: {username}}
//   (if the server keeps history) "history" {messages: [{id, content, user, at}]},
//                                          oldest first, right after the join reply
//
// All user text goes into the page with textContent, never as HTML.

import { LongPoll, Presence, Socket } from "/_roost/phoenix.mjs";

const NAME_KEY = "roost-chat:name";
const DEFAULT_ROOM = "lobby";
// Two messages from one person this close together share one header.
const GROUP_MS = 5 * 60 * 1000;

const $ = (id) => document.getElementById(id);
const ui = {
  roomName: $("room-name"),
  emptyRoom: $("empty-room"),
  status: $("status"),
  statusText: $("status-text"),
  me: $("me"),
  messages: $("messages"),
  empty: $("empty"),
  list: $("message-list"),
  onlineCount: $("online-count"),
  onlineList: $("online-list"),
  roomForm: $("room-form"),
  roomInput: $("room-input"),
  composer: $("composer"),
  input: $("message-input"),
  send: $("send"),
  nameDialog: $("name-dialog"),
  nameForm: $("name-form"),
  nameInput: $("name-input"),
};

const endpoint = document.querySelector('meta[name="roost-socket"]')?.content || "/socket";
// If WebSocket is blocked (a proxy, a firewall), phoenix.js switches to
// long-poll after this long without a connection.
const socket = new Socket(endpoint, { longPollFallbackMs: 2500 });

let name = localStorage.getItem(NAME_KEY) || "";
let room = null; // { name, channel, presence, joined, synced }
let everOnline = false;
let socketOpen = false;

// --- connection state --------------------------------------------------------

socket.onOpen(() => {
  socketOpen = true;
  showStatus();
});
socket.onError(() => {
  socketOpen = false;
  showStatus();
});
socket.onClose(() => {
  socketOpen = false;
  showStatus();
});

/** connecting (never been online) / online / reconnecting (was online). */
function showStatus() {
  const online = socketOpen && room?.joined;
  if (online) everOnline = true;
  const state = online ? "online" : everOnline ? "reconnecting" : "connecting";
  const transport = socket.transport === LongPoll ? "long-poll" : "WebSocket";
  ui.status.dataset.state = state;
  document.body.dataset.state = state;
  ui.status.dataset.transport = transport;
  ui.statusText.textContent =
    state === "online" ? `online · ${transport}` : state === "reconnecting" ? "reconnecting…" : "connecting…";
  ui.send.disabled = !online;
}

// --- rooms -------------------------------------------------------------------

function roomFromHash() {
  let wanted = "";
  try {
    wanted = decodeURIComponent(location.hash.slice(1));
  } catch {
    // A malformed escape: fall back to the default room.
  }
  return wanted.trim().slice(0, 64) || DEFAULT_ROOM;
}

function enterRoom(roomName) {
  if (room) {
    room.channel.leave();
  }
  const channel = socket.channel(`room:${roomName}`, () => ({ username: name }));
  const presence = new Presence(channel);
  const current = { name: roomName, channel, presence, joined: false, synced: false };
  room = current;

  ui.roomName.textContent = roomName;
  ui.emptyRoom.textContent = roomName;
  ui.input.placeholder = `Message #${roomName}`;
  document.title = `#${roomName} · Roost chat`;
  clearMessages();
  showOnline();

  channel.on(`room:${roomName}:new_message`, (message) => addMessage(message));
  // Sent by a server that keeps history, right after each join reply: the
  // list it sends replaces ours, so a rejoin shows no gaps and no duplicates.
  channel.on("history", ({ messages = [] }) => {
    clearMessages();
    for (const message of messages) addMessage(message);
  });

  presence.onSync(() => {
    current.synced = true;
    showOnline();
  });
  presence.onJoin((user, before) => {
    if (current.synced && !before && user !== name) addNotice(`${user} joined`);
  });
  presence.onLeave((user, remaining) => {
    if (current.synced && remaining.metas.length === 0 && user !== name) addNotice(`${user} left`);
  });

  channel.onError(() => {
    current.joined = false;
    showStatus();
  });
  channel.onClose(() => {
    current.joined = false;
    showStatus();
  });
  channel
    .join()
    .receive("ok", () => {
      current.joined = true;
      showStatus();
    })
    .receive("error", (reply) => {
      current.joined = false;
      addNotice(`Could not join #${roomName}: ${reply?.reason || "refused"}`);
      showStatus();
    });
  showStatus();
}

window.addEventListener("hashchange", () => {
  const wanted = roomFromHash();
  if (name && wanted !== room?.name) enterRoom(wanted);
});

ui.roomForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const wanted = ui.roomInput.value.trim().replace(/^#/, "");
  ui.roomInput.value = "";
  if (wanted) location.hash = encodeURIComponent(wanted);
  ui.input.focus();
});

// --- messages ----------------------------------------------------------------

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
let last = null; // { user, at } of the last message shown, for grouping

function clearMessages() {
  ui.list.replaceChildren();
  last = null;
  ui.empty.hidden = false;
}

/** Appends one chat message ({content, user: {username}, at?}). */
function addMessage(message) {
  const user = String(message?.user?.username ?? "anonymous");
  const text = String(message?.content ?? "");
  const at = Number.isFinite(message?.at) ? message.at : Date.now();
  const stick = nearBottom();

  const item = document.createElement("li");
  item.className = "message";
  item.dataset.user = user;
  if (user === name) item.classList.add("mine");
  const grouped = last && last.user === user && at - last.at < GROUP_MS;
  if (grouped) {
    item.classList.add("grouped");
  } else {
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.textContent = initials(user);
    avatar.style.setProperty("--hue", hue(user));
    avatar.setAttribute("aria-hidden", "true");

    const author = document.createElement("span");
    author.className = "author";
    author.textContent = user;

    const time = document.createElement("time");
    time.dateTime = new Date(at).toISOString();
    time.title = dateTimeFormat.format(at);
    time.textContent = timeFormat.format(at);

    const header = document.createElement("div");
    header.className = "meta";
    header.append(author, time);
    item.append(avatar, header);
  }
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  item.append(body);

  ui.list.append(item);
  ui.empty.hidden = true;
  last = { user, at };
  if (stick) scrollToBottom();
}

/** A line about the room, not from a person (joins, leaves, errors). */
function addNotice(text) {
  const stick = nearBottom();
  const item = document.createElement("li");
  item.className = "notice";
  item.textContent = text;
  ui.list.append(item);
  last = null;
  if (stick) scrollToBottom();
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToBottom() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.input.value.trim();
  if (!text || !room?.joined) return;
  room.channel
    .push("message:add", { message: text })
    .receive("error", () => addNotice("The server refused that message."))
    .receive("timeout", () => addNotice("Not sent: no answer from the server."));
  ui.input.value = "";
  ui.input.focus();
});

// --- who is online -----------------------------------------------------------

function showOnline() {
  const people = room
    ? room.presence.list((user, { metas }) => ({ user, tabs: metas.length }))
    : [];
  people.sort((a, b) => a.user.localeCompare(b.user));
  ui.onlineCount.textContent = String(people.length);
  ui.onlineList.replaceChildren(
    ...people.map(({ user, tabs }) => {
      const item = document.createElement("li");
      item.dataset.user = user;
      const avatar = document.createElement("span");
      avatar.className = "avatar small";
      avatar.textContent = initials(user);
      avatar.style.setProperty("--hue", hue(user));
      avatar.setAttribute("aria-hidden", "true");
      const label = document.createElement("span");
      label.className = "who";
      label.textContent = user;
      item.append(avatar, label);
      if (user === name) {
        const you = document.createElement("span");
        you.className = "you";
        you.textContent = "you";
        item.append(you);
      }
      if (tabs > 1) {
        const count = document.createElement("span");
        count.className = "tabs";
        count.textContent = `${tabs} tabs`;
        item.append(count);
      }
      return item;
    }),
  );
}

// --- names -------------------------------------------------------------------

function initials(user) {
  const words = user.trim().split(/\s+/).filter(Boolean);
  const first = (word) => [...(word || "?")][0];
  return (words.length > 1 ? first(words[0]) + first(words[1]) : first(words[0])).toUpperCase();
}

/** A stable colour per name. */
function hue(user) {
  let h = 0;
  for (const ch of user) h = (h * 31 + ch.codePointAt(0)) % 360;
  return String(h);
}

function askName() {
  ui.nameInput.value = name;
  ui.nameDialog.showModal();
  ui.nameInput.focus();
}

ui.nameForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const chosen = ui.nameInput.value.trim().slice(0, 32);
  if (!chosen) return;
  ui.nameDialog.close();
  const changed = chosen !== name;
  name = chosen;
  localStorage.setItem(NAME_KEY, name);
  ui.me.textContent = name;
  // The name is the join payload: a new name is a new join.
  if (changed || !room) enterRoom(roomFromHash());
  ui.input.focus();
});

ui.nameDialog.addEventListener("cancel", (event) => {
  // Without a name there is nothing to join as.
  if (!name) event.preventDefault();
});

ui.me.addEventListener("click", askName);

// --- start -------------------------------------------------------------------

showStatus();
socket.connect();
if (name) {
  ui.me.textContent = name;
  enterRoom(roomFromHash());
  ui.input.focus();
} else {
  askName();
}

// For tests and the curious: the socket and the current room.
window.roostChat = { socket, get room() { return room; } };
