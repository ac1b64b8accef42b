// The chat page: connect with a token, list conversations a page at a time, search them, open
// one, send a message and watch the reply stream in, stop it, delete a conversation; edit a
// message or have a reply generated again, and move between the versions; a reload in the middle
// of a reply picks it up where it was.
import "./style.css";
import type { CallOptions } from "@connectrpc/connect";

import { createApi, describeError, type Api, type CallReport } from "./api";
import { conversationItem, MessageView, searchResult } from "./render";
import { Disconnect, type SendMessageResponse } from "./gen/chat/v1/chat_service_pb";
import { Role, type Message } from "./gen/chat/v1/resources_pb";

const PAGE_SIZE = 20;
/** The parent of a first message. */
const ROOT = "00000000-0000-0000-0000-000000000000";
/** Where this tab keeps the turn it is streaming, for a reload to resume. */
const PENDING = "chat.pending";

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} is missing from index.html`);
  return node as T;
}

const ui = {
  connect: byId<HTMLFormElement>("connect"),
  server: byId<HTMLInputElement>("server"),
  token: byId<HTMLInputElement>("token"),
  error: byId<HTMLDivElement>("error"),
  newConversation: byId<HTMLButtonElement>("new-conversation"),
  conversations: byId<HTMLUListElement>("conversations"),
  search: byId<HTMLFormElement>("search"),
  searchQuery: byId<HTMLInputElement>("search-query"),
  searchResults: byId<HTMLUListElement>("search-results"),
  more: byId<HTMLButtonElement>("more-conversations"),
  title: byId<HTMLHeadingElement>("title"),
  delete: byId<HTMLButtonElement>("delete"),
  notice: byId<HTMLParagraphElement>("notice"),
  messages: byId<HTMLOListElement>("messages"),
  composer: byId<HTMLFormElement>("composer"),
  input: byId<HTMLTextAreaElement>("input"),
  send: byId<HTMLButtonElement>("send"),
  stop: byId<HTMLButtonElement>("stop"),
  status: byId<HTMLElement>("status"),
};

let api: Api | null = null;
/** The open conversation; null for a new one, which the first message creates. */
let openId: string | null = null;
let nextPageToken = "";

/** The turn being streamed. Aborting its call leaves the turn to go on; stopping cancels it. */
interface Streaming {
  controller: AbortController;
  /** The user message it answers, once accepted: what CancelTurn and ResumeTurn name. */
  messageId: string | null;
  stopped: boolean;
}
let streaming: Streaming | null = null;

/** A turn this tab started that may still be generating, as sessionStorage keeps it. */
interface Pending {
  conversationId: string;
  messageId: string;
  /** The last event shown, and the reply's text up to it. */
  sequence: number;
  text: string;
}

function loadPending(): Pending | null {
  try {
    return JSON.parse(sessionStorage.getItem(PENDING) ?? "null") as Pending | null;
  } catch {
    return null;
  }
}

function savePending(pending: Pending | null): void {
  if (pending) sessionStorage.setItem(PENDING, JSON.stringify(pending));
  else sessionStorage.removeItem(PENDING);
}

/** A new request id: a retry with it would be the same turn. */
function requestId(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- status line and errors ----

function report(call: CallReport): void {
  const parts = [call.method, call.code];
  if (call.requestId) parts.push(`request id ${call.requestId}`);
  ui.status.textContent = parts.join(" · ");
  ui.status.dataset.method = call.method;
  ui.status.dataset.code = call.code;
  ui.status.dataset.requestId = call.requestId ?? "";
}

function showError(reason: unknown): void {
  const { code, text } = describeError(reason, api?.server ?? ui.server.value);
  ui.error.textContent = text;
  ui.error.dataset.code = code;
  ui.error.hidden = false;
}

function clearError(): void {
  ui.error.hidden = true;
  ui.error.textContent = "";
  delete ui.error.dataset.code;
}

/** Runs what the user asked for; an error is shown as the service words it. */
async function action(run: () => Promise<void>): Promise<void> {
  clearError();
  try {
    await run();
  } catch (reason) {
    showError(reason);
  }
}

function connected(): Api {
  if (!api) throw new Error("Paste a token and press Connect first.");
  return api;
}

// ---- conversations ----

async function loadConversations(more: boolean): Promise<void> {
  const client = connected();
  const page = await client.call("ListConversations", (options) =>
    client.conversations.listConversations(
      { pageSize: PAGE_SIZE, pageToken: more ? nextPageToken : "" },
      options,
    ),
  );
  if (!more) ui.conversations.replaceChildren();
  ui.conversations.append(...page.conversations.map(conversationItem));
  nextPageToken = page.nextPageToken;
  ui.more.hidden = nextPageToken === "";
  highlight();
}

/** Shows the conversations that match the query, best first; an empty query shows the list. */
async function search(): Promise<void> {
  const query = ui.searchQuery.value.trim();
  const searching = query !== "";
  ui.searchResults.hidden = !searching;
  ui.conversations.hidden = searching;
  ui.more.hidden = searching || nextPageToken === "";
  if (!searching) {
    ui.searchResults.replaceChildren();
    return;
  }
  const client = connected();
  const found = await client.call("SearchConversations", (options) =>
    client.conversations.searchConversations({ query, pageSize: PAGE_SIZE }, options),
  );
  ui.searchResults.replaceChildren(...found.matches.map(searchResult));
  if (!found.matches.length) ui.searchResults.append(Object.assign(document.createElement("li"), { className: "empty", textContent: "Nothing found" }));
}

function highlight(): void {
  for (const item of ui.conversations.children) {
    item.classList.toggle("open", (item as HTMLElement).dataset.id === openId);
  }
}

function showConversation(id: string | null, title: string): void {
  openId = id;
  ui.title.textContent = title;
  ui.delete.hidden = id === null;
  ui.notice.hidden = true;
  ui.messages.replaceChildren();
  highlight();
}

async function openConversation(id: string): Promise<void> {
  const client = connected();
  showConversation(id, "…");
  const { conversation, messages, hasOlderMessages } = await client
    .call("GetConversation", (options) => client.conversations.getConversation({ conversationId: id }, options))
    .catch((error: unknown) => {
      // Nothing to show: what is typed next starts a new conversation.
      showConversation(null, "New conversation");
      throw error;
    });
  showConversation(id, conversation?.title || "Untitled");
  showBranch(messages, hasOlderMessages);
  // A reply this tab was streaming when it was reloaded, or left: picked up where it was.
  const pending = loadPending();
  if (pending?.conversationId === id) {
    const last = ui.messages.lastElementChild as HTMLElement | null;
    if (last?.dataset.id === pending.messageId) void action(() => resume(pending));
    else savePending(null);
  }
}

/** Shows the conversation's current branch, as the service read it. */
function showBranch(messages: Message[], hasOlderMessages: boolean): void {
  ui.notice.hidden = !hasOlderMessages;
  ui.messages.replaceChildren(...MessageView.storedAll(messages).map((view) => view.root));
  scrollToEnd();
}

/** Reads the open conversation's branch again: after an edit or another reply, its versions. */
async function refreshBranch(): Promise<void> {
  const client = connected();
  const id = openId;
  if (id === null) return;
  const { messages, hasOlderMessages } = await client.call("GetConversation", (options) =>
    client.conversations.getConversation({ conversationId: id }, options),
  );
  if (openId === id && !streaming) showBranch(messages, hasOlderMessages);
}

/** Shows the branch that holds `messageId`: another version of a message. */
async function switchTo(messageId: string): Promise<void> {
  const client = connected();
  const id = openId;
  if (id === null || streaming) return;
  const { messages, hasOlderMessages } = await client.call("SwitchBranch", (options) =>
    client.conversations.switchBranch({ conversationId: id, messageId }, options),
  );
  if (openId === id) showBranch(messages, hasOlderMessages);
}

async function deleteConversation(): Promise<void> {
  const client = connected();
  const id = openId;
  if (id === null || !confirm(`Delete “${ui.title.textContent}” and all its messages?`)) return;
  streaming?.controller.abort();
  if (loadPending()?.conversationId === id) savePending(null);
  await client.call("DeleteConversation", (options) =>
    client.conversations.deleteConversation({ conversationId: id }, options),
  );
  ui.conversations.querySelector(`li[data-id="${CSS.escape(id)}"]`)?.remove();
  history.replaceState(null, "", location.pathname + location.search);
  showConversation(null, "New conversation");
}

/** Follows the address: `#/c/<id>` opens a conversation, anything else starts a new one. */
async function route(): Promise<void> {
  // Leaving a reply that is still streaming leaves it to go on: coming back picks it up.
  streaming?.controller.abort();
  const id = /^#\/c\/(.+)$/.exec(location.hash)?.[1];
  if (id) await openConversation(decodeURIComponent(id));
  else showConversation(null, "New conversation");
}

// ---- sending ----

type Numbered = { event: SendMessageResponse["event"]; sequence: bigint };

/**
 * Streams a turn's events into `reply` (and marks `user` accepted), keeping in sessionStorage
 * how far it got, so that a reload resumes it. `resumed` is what was shown before, when resuming.
 * False if the page left the turn before its end (it goes on).
 */
async function follow(
  method: string,
  user: MessageView | null,
  reply: MessageView,
  open: (options: CallOptions) => AsyncIterable<Numbered>,
  resumed: Pending | null,
): Promise<boolean> {
  const client = connected();
  const turn: Streaming = { controller: new AbortController(), messageId: resumed?.messageId ?? null, stopped: false };
  streaming = turn;
  setStreaming(true);
  let pending = resumed;
  // While only text came, a reload shows the text kept and resumes after it; once a tool call
  // came, it resumes from the start of the reply, which shows the calls again.
  let textOnly = !resumed || resumed.sequence > 1 || resumed.text !== "";
  try {
    await client.call(
      method,
      async (options) => {
        for await (const { event, sequence } of open(options)) {
          const at = Number(sequence);
          switch (event.case) {
            case "accepted": {
              const message = event.value.userMessage;
              if (message) user?.accepted(message);
              if (openId === null) {
                openId = event.value.conversationId;
                history.replaceState(null, "", `#/c/${openId}`);
                ui.delete.hidden = false;
              }
              turn.messageId = message?.id ?? null;
              pending = { conversationId: event.value.conversationId, messageId: turn.messageId ?? "", sequence: at, text: "" };
              // Stopped before the service named the turn: cancelled now.
              if (turn.stopped) void action(stop);
              break;
            }
            case "delta":
              reply.appendText(event.value.text);
              if (pending && textOnly) pending = { ...pending, sequence: at, text: pending.text + event.value.text };
              break;
            case "toolCall":
              reply.addToolCall(event.value);
              textOnly = false;
              break;
            case "toolResult":
              reply.applyToolResult(event.value);
              textOnly = false;
              break;
            case "completed":
              reply.completed(event.value);
              pending = null;
              break;
          }
          if (!textOnly && pending) pending = { ...pending, sequence: 1, text: "" };
          savePending(pending);
          scrollToEnd();
        }
      },
      turn.controller.signal,
    );
    savePending(null);
  } catch (reason) {
    // The page left the turn, which goes on: a later visit picks it up.
    if (turn.controller.signal.aborted) return false;
    savePending(null);
    if (turn.stopped) {
      reply.mark("stopped", "stopped");
      return true;
    }
    if (user?.root.dataset.state === "sending") user.mark("failed", "not sent");
    reply.mark("failed", "failed");
    throw reason;
  } finally {
    if (streaming === turn) {
      streaming = null;
      setStreaming(false);
    }
  }
  user?.offerActions();
  reply.offerActions();
  return true;
}

/** Sends a message, after the branch's last one or, for an edit, after `parent`. */
async function send(content: string, parent = ""): Promise<void> {
  const client = connected();
  const user = new MessageView(Role.USER, "sending");
  user.appendText(content);
  const reply = new MessageView(Role.ASSISTANT, "streaming");
  ui.messages.append(user.root, reply.root);
  scrollToEnd();
  const request = {
    conversationId: openId ?? "",
    content,
    parentMessageId: parent,
    requestId: requestId(),
    onDisconnect: Disconnect.CONTINUE,
  };
  const stayed = await follow("SendMessage", user, reply, (options) => client.chat.sendMessage(request, options), null);
  if (!stayed) return;
  // The conversation moved to the top of the list (or is new there, named by the service).
  await loadConversations(false);
  const item = ui.conversations.querySelector<HTMLElement>(`li[data-id="${CSS.escape(openId ?? "")}"] a`);
  if (item) ui.title.textContent = item.textContent;
  if (parent) await refreshBranch();
}

/** Streams another reply to the user's message `messageId`. */
async function regenerate(messageId: string): Promise<void> {
  const client = connected();
  const reply = new MessageView(Role.ASSISTANT, "streaming");
  ui.messages.append(reply.root);
  scrollToEnd();
  const request = { messageId, requestId: requestId(), onDisconnect: Disconnect.CONTINUE };
  if (await follow("RegenerateReply", null, reply, (options) => client.chat.regenerateReply(request, options), null)) {
    await refreshBranch();
  }
}

/** Picks up a reply this tab was streaming: the text it had, then the events after it. */
async function resume(pending: Pending): Promise<void> {
  const client = connected();
  const reply = new MessageView(Role.ASSISTANT, "streaming");
  reply.appendText(pending.text);
  ui.messages.append(reply.root);
  scrollToEnd();
  const request = { messageId: pending.messageId, afterSequence: BigInt(pending.sequence) };
  await follow("ResumeTurn", null, reply, (options) => client.chat.resumeTurn(request, options), pending);
}

/** Stops the reply being streamed: the service cancels its turn and stores what it had. */
async function stop(): Promise<void> {
  const turn = streaming;
  if (!turn) return;
  turn.stopped = true;
  const messageId = turn.messageId;
  if (messageId === null) return;
  const client = connected();
  await client.call("CancelTurn", (options) => client.chat.cancelTurn({ messageId }, options));
}

/** The message the one in `item` follows: as read, or the one shown before it. */
function parentOf(item: HTMLElement): string {
  if (item.dataset.parentId) return item.dataset.parentId;
  const before = item.previousElementSibling as HTMLElement | null;
  return before?.dataset.id ?? ROOT;
}

/** Removes `item` and everything after it: what an edit or another reply replaces. */
function cutFrom(item: HTMLElement): void {
  while (item.nextElementSibling) item.nextElementSibling.remove();
  item.remove();
}

/** Turns the user's message in `item` into an editor; saving sends the new version. */
function startEdit(item: HTMLElement): void {
  if (streaming || item.querySelector(".editor")) return;
  const body = item.querySelector<HTMLElement>(".body");
  const editor = document.createElement("form");
  editor.className = "editor";
  const input = document.createElement("textarea");
  input.value = [...item.querySelectorAll(".text")].map((node) => node.textContent).join("");
  const save = Object.assign(document.createElement("button"), { type: "submit", className: "save", textContent: "Send" });
  const cancel = Object.assign(document.createElement("button"), { type: "button", className: "cancel", textContent: "Cancel" });
  const buttons = document.createElement("div");
  buttons.append(save, cancel);
  editor.append(input, buttons);
  if (body) body.hidden = true;
  item.append(editor);
  input.focus();
  cancel.addEventListener("click", () => {
    editor.remove();
    if (body) body.hidden = false;
  });
  editor.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = input.value;
    if (!content.trim() || streaming) return;
    const parent = parentOf(item);
    cutFrom(item);
    void action(() => send(content, parent));
  });
}

/** Asks for another reply in place of the one in `item`. */
function startRegenerate(item: HTMLElement): void {
  if (streaming) return;
  let asked = item.previousElementSibling as HTMLElement | null;
  while (asked && asked.dataset.role !== "user") asked = asked.previousElementSibling as HTMLElement | null;
  const messageId = asked?.dataset.id;
  if (!messageId) return;
  cutFrom(item);
  void action(() => regenerate(messageId));
}

function setStreaming(on: boolean): void {
  ui.send.hidden = on;
  ui.stop.hidden = !on;
  ui.input.disabled = on;
}

function scrollToEnd(): void {
  ui.messages.lastElementChild?.scrollIntoView({ block: "end" });
}

// ---- wiring ----

ui.connect.addEventListener("submit", (event) => {
  event.preventDefault();
  void action(async () => {
    const server = ui.server.value.trim().replace(/\/+$/, "");
    const token = ui.token.value.trim();
    localStorage.setItem("chat.server", server);
    localStorage.setItem("chat.token", token);
    api = createApi(server, token, report);
    ui.send.disabled = false;
    await loadConversations(false);
    await route();
  });
});

// The open conversation's link changes no address: reload it instead.
function reloadWhenOpen(event: Event): void {
  const link = (event.target as Element).closest("a");
  if (link && link.hash === location.hash) {
    event.preventDefault();
    void action(route);
  }
}
ui.conversations.addEventListener("click", reloadWhenOpen);
ui.searchResults.addEventListener("click", reloadWhenOpen);
ui.more.addEventListener("click", () => void action(() => loadConversations(true)));
ui.search.addEventListener("submit", (event) => {
  event.preventDefault();
  void action(search);
});
// Clearing the box (its × or Escape) brings the list back; Enter submits the form.
ui.searchQuery.addEventListener("search", () => {
  if (!ui.searchQuery.value) void action(search);
});
ui.newConversation.addEventListener("click", () => {
  if (location.hash) location.hash = "";
  else void action(route);
});
ui.delete.addEventListener("click", () => void action(deleteConversation));
window.addEventListener("hashchange", () => void action(route));

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const content = ui.input.value;
  if (!content.trim() || streaming) return;
  ui.input.value = "";
  void action(() => send(content));
});
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => void action(stop));
ui.messages.addEventListener("click", (event) => {
  const button = (event.target as Element).closest("button");
  const item = button?.closest<HTMLElement>("li.message");
  if (!button || !item) return;
  if (button.matches(".sibling") && button.dataset.target) void action(() => switchTo(button.dataset.target ?? ""));
  else if (button.matches(".edit")) startEdit(item);
  else if (button.matches(".regenerate")) startRegenerate(item);
});

// `?server=` names the service; otherwise the last one used, or a local one.
ui.server.value =
  new URLSearchParams(location.search).get("server") ??
  localStorage.getItem("chat.server") ??
  "http://localhost:50051";
ui.token.value = localStorage.getItem("chat.token") ?? "";
if (ui.token.value) ui.connect.requestSubmit();
