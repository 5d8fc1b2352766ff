// The chat page: conversations in localStorage, streaming answers from /v1/chat/completions over SSE,
// a stop button that aborts the request, and a key prompt when the server answers 401.
import { renderMarkdown } from "./markdown.js";

const STORAGE = { conversations: "janlib.conversations", current: "janlib.current", settings: "janlib.settings" };
const KEY_STORAGE = "janlib.apiKey";  // sessionStorage: gone with the tab
const NUMBER_SETTINGS = { temperature: parseFloat, top_p: parseFloat, max_tokens: parseInt, seed: parseInt };
const TITLE_LENGTH = 60;
const VERSION_CHECK_MS = 10 * 60_000;  // and whenever the page becomes visible again

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"), backdrop: $("backdrop"), conversations: $("conversations"), messages: $("messages"),
  empty: $("empty"), composer: $("composer"), input: $("input"), send: $("send"), stop: $("stop"),
  modelName: $("model-name"), settings: $("settings"), settingsForm: $("settings-form"),
  settingsError: $("settings-error"), keyDialog: $("key-dialog"), keyForm: $("key-form"),
  keyInput: $("key-input"), keyMessage: $("key-message"), upgraded: $("upgraded"),
  upgradedMessage: $("upgraded-message"),
};

let conversations = load(STORAGE.conversations, []);
let currentId = localStorage.getItem(STORAGE.current);
let settings = load(STORAGE.settings, {});
let modelId = null;
let controller = null;  // the AbortController of the generation running, if any

function load(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

function save() {
  localStorage.setItem(STORAGE.conversations, JSON.stringify(conversations));
  if (currentId) localStorage.setItem(STORAGE.current, currentId);
  else localStorage.removeItem(STORAGE.current);
}

function current() {
  return conversations.find((c) => c.id === currentId) ?? null;
}

// ---- API access: the key from sessionStorage, a prompt on 401 ----

class APIError extends Error {}

async function api(path, options = {}) {
  for (;;) {
    const key = sessionStorage.getItem(KEY_STORAGE);
    const headers = { ...options.headers, ...(key ? { Authorization: "Bearer " + key } : {}) };
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    const message = await errorMessage(response);
    const entered = await askKey(key ? message : "This server needs an API key.");
    if (entered === null) throw new APIError(message);
    sessionStorage.setItem(KEY_STORAGE, entered);
  }
}

async function errorMessage(response) {
  const text = await response.text();
  try {
    return JSON.parse(text).error.message;
  } catch {
    return `HTTP ${response.status}: ${text.slice(0, 200)}`;
  }
}

let keyRequest = null;  // requests that meet a 401 together share one prompt

function askKey(message) {
  keyRequest ??= new Promise((resolve) => {
    ui.keyMessage.textContent = message;
    ui.keyInput.value = "";
    const finish = (value) => {
      ui.keyForm.onsubmit = ui.keyDialog.oncancel = $("key-cancel").onclick = null;
      ui.keyDialog.close();
      keyRequest = null;
      resolve(value);
    };
    ui.keyForm.onsubmit = (event) => {
      event.preventDefault();
      finish(ui.keyInput.value.trim() || null);
    };
    ui.keyDialog.oncancel = (event) => {
      event.preventDefault();
      finish(null);
    };
    $("key-cancel").onclick = () => finish(null);
    ui.keyDialog.showModal();
    ui.keyInput.focus();
  });
  return keyRequest;
}

/** The JSON events of a text/event-stream body, until [DONE]. */
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = /\r?\n\r?\n/.exec(buffer))) {
        const block = buffer.slice(0, end.index);
        buffer = buffer.slice(end.index + end[0].length);
        const data = block.split(/\r?\n/).filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (data === "[DONE]") return;
        if (data) yield JSON.parse(data);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

async function loadModel() {
  try {
    const response = await api("v1/models");
    if (!response.ok) throw new APIError(await errorMessage(response));
    modelId = (await response.json()).data[0].id;
    ui.modelName.textContent = "· " + modelId;
  } catch (error) {
    ui.modelName.textContent = "· " + error.message;
  }
}

// ---- settings ----

function settingsFields() {
  return [...ui.settingsForm.elements].filter((field) => field.name);
}

function showSettings() {
  for (const field of settingsFields()) field.value = settings[field.name] ?? "";
  ui.settingsError.hidden = true;
  ui.settings.showModal();
}

/** The request fields of the settings; throws with a message naming a bad field. */
function requestOptions() {
  const options = {};
  for (const [name, parse] of Object.entries(NUMBER_SETTINGS)) {
    const text = String(settings[name] ?? "").trim();
    if (text === "") continue;
    const value = parse(text);
    if (!Number.isFinite(value)) throw new Error(`${name} must be a number, got "${text}"`);
    options[name] = value;
  }
  const extra = String(settings.extra ?? "").trim();
  if (extra) {
    let fields;
    try {
      fields = JSON.parse(extra);
    } catch (error) {
      throw new Error("Extra request fields: " + error.message);
    }
    if (typeof fields !== "object" || fields === null || Array.isArray(fields)) {
      throw new Error("Extra request fields must be a JSON object");
    }
    Object.assign(options, fields);
  }
  return options;
}

ui.settingsForm.addEventListener("input", () => {
  for (const field of settingsFields()) settings[field.name] = field.value;
  localStorage.setItem(STORAGE.settings, JSON.stringify(settings));
  try {
    requestOptions();
    ui.settingsError.hidden = true;
  } catch (error) {
    ui.settingsError.textContent = error.message;
    ui.settingsError.hidden = false;
  }
});
ui.settingsForm.addEventListener("submit", (event) => {
  event.preventDefault();
  ui.settings.close();
});
$("settings-reset").addEventListener("click", () => {
  for (const field of settingsFields()) field.value = "";
  ui.settingsForm.dispatchEvent(new Event("input"));
});
$("settings-button").addEventListener("click", showSettings);

// ---- rendering ----

function renderConversationList() {
  ui.conversations.replaceChildren(...conversations.map((conversation) => {
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = conversation.title || "New chat";
    open.addEventListener("click", () => select(conversation.id));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "×";
    remove.title = "Delete conversation";
    remove.setAttribute("aria-label", remove.title);
    remove.addEventListener("click", () => deleteConversation(conversation.id));
    const item = document.createElement("li");
    item.classList.toggle("active", conversation.id === currentId);
    item.append(open, remove);
    return item;
  }));
}

function statsText(message) {
  const parts = [];
  const t = message.timings;
  if (t) {
    parts.push(`${t.predicted_n} tokens`, `${t.predicted_per_second.toFixed(1)} tokens/s`);
    if (t.prompt_n) parts.push(`prompt ${t.prompt_n} tokens at ${t.prompt_per_second.toFixed(0)} tokens/s`);
  }
  if (message.stopped) parts.push("stopped");
  if (message.finish === "length") parts.push("cut at the token limit");
  return parts.join(" · ");
}

/** The view of one message; update() redraws it from message (at most once a frame while streaming). */
function messageView(message) {
  const article = document.createElement("article");
  article.className = "message " + message.role;
  const content = document.createElement("div");
  content.className = "content";
  const stats = document.createElement("div");
  stats.className = "stats";
  const error = document.createElement("div");
  error.className = "error";
  article.append(content, error, stats);
  let pending = false;
  const draw = () => {
    pending = false;
    if (message.role === "user") content.textContent = message.content;
    else content.replaceChildren(renderMarkdown(message.content));
    error.textContent = message.error ?? "";
    error.hidden = !message.error;
    stats.textContent = statsText(message);
    stats.hidden = !stats.textContent;
  };
  draw();
  return {
    element: article,
    update(now = false) {
      if (now) draw();
      else if (!pending) {
        pending = true;
        requestAnimationFrame(draw);
      }
    },
  };
}

function renderMessages() {
  const conversation = current();
  const views = (conversation?.messages ?? []).map((message) => messageView(message).element);
  ui.messages.replaceChildren(ui.empty, ...views);
  ui.empty.hidden = views.length > 0;
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function render() {
  renderConversationList();
  renderMessages();
}

function select(id) {
  if (controller) return;  // a generation writes into the conversation shown
  currentId = id;
  save();
  closeSidebar();
  render();
  ui.input.focus();
}

function deleteConversation(id) {
  if (controller && id === currentId) return;
  conversations = conversations.filter((c) => c.id !== id);
  if (id === currentId) currentId = conversations[0]?.id ?? null;
  save();
  render();
}

function newConversation(firstMessage) {
  const conversation = { id: crypto.randomUUID(), title: firstMessage.slice(0, TITLE_LENGTH), messages: [] };
  conversations.unshift(conversation);
  currentId = conversation.id;
  return conversation;
}

// ---- generation ----

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  document.body.classList.toggle("busy", busy);
}

function requestMessages(conversation) {
  const messages = conversation.messages.filter((m) => m.content && !(m.role === "assistant" && m.error))
    .map(({ role, content }) => ({ role, content }));
  const system = String(settings.system ?? "").trim();
  return system ? [{ role: "system", content: system }, ...messages] : messages;
}

async function generate(conversation) {
  const reply = { role: "assistant", content: "" };
  let body;
  try {
    body = {
      model: modelId, messages: requestMessages(conversation), ...requestOptions(),
      stream: true, stream_options: { include_usage: true },
    };
  } catch (error) {
    reply.error = error.message;
  }
  conversation.messages.push(reply);
  const view = messageView(reply);
  ui.empty.hidden = true;
  ui.messages.append(view.element);
  save();
  if (!body) return;

  controller = new AbortController();
  setBusy(true);
  try {
    if (!modelId) await loadModel();
    body.model ??= modelId;
    const response = await api("v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new APIError(await errorMessage(response));
    for await (const event of serverSentEvents(response.body)) {
      if (event.error) throw new APIError(event.error.message);
      const choice = event.choices?.[0];
      if (choice?.delta?.content) reply.content += choice.delta.content;
      if (choice?.finish_reason) reply.finish = choice.finish_reason;
      if (event.timings) reply.timings = event.timings;
      view.update();
      if (nearBottom()) ui.messages.scrollTop = ui.messages.scrollHeight;
    }
  } catch (error) {
    if (error.name === "AbortError") reply.stopped = true;
    else reply.error = error instanceof APIError ? error.message : "The request failed: " + error.message;
  } finally {
    controller = null;
    setBusy(false);
    save();
    view.update(true);
    ui.input.focus();
  }
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

async function send() {
  const text = ui.input.value.trim();
  if (!text || controller) return;
  ui.input.value = "";
  const conversation = current() ?? newConversation(text);
  const message = { role: "user", content: text };
  conversation.messages.push(message);
  conversations = [conversation, ...conversations.filter((c) => c !== conversation)];  // most recent first
  save();
  renderConversationList();
  ui.empty.hidden = true;
  ui.messages.append(messageView(message).element);
  ui.messages.scrollTop = ui.messages.scrollHeight;
  await generate(conversation);
}

// ---- wiring ----

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.stop.addEventListener("click", () => controller?.abort());
$("new-chat").addEventListener("click", () => select(null));

function closeSidebar() {
  ui.sidebar.classList.remove("open");
  ui.backdrop.hidden = true;
}
$("menu").addEventListener("click", () => {
  ui.sidebar.classList.add("open");
  ui.backdrop.hidden = false;
});
ui.backdrop.addEventListener("click", closeSidebar);

// ---- installable app: the service worker, and a notice when the server was upgraded ----

let pageVersion = null;  // the server's version when the page first reached it

async function checkVersion() {
  let version;
  try {
    version = (await (await fetch("_app/version.json", { cache: "no-store" })).json()).version;
  } catch {
    return;  // unreachable for now: the next check tells
  }
  pageVersion ??= version;
  ui.upgraded.hidden = version === pageVersion;
  ui.upgradedMessage.textContent = `The server was upgraded to janlib ${version}.`;
}

if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("sw.js").catch((error) => console.warn("no service worker:", error));
}
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") checkVersion();
});
setInterval(checkVersion, VERSION_CHECK_MS);
$("reload").addEventListener("click", () => location.reload());

render();
loadModel();
checkVersion();
