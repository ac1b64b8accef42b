// The chat page: connect with a token, list conversations a page at a time, search them, open
// one, send a message and watch the reply stream in, stop it, delete a conversation.
import "./style.css";

import { createApi, describeError, type Api, type CallReport } from "./api";
import { conversationItem, MessageView, searchResult } from "./render";
import { Role } from "./gen/chat/v1/resources_pb";

const PAGE_SIZE = 20;

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
/** Aborts the reply being streamed, if any. */
let streaming: AbortController | null = null;

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
  ui.notice.hidden = !hasOlderMessages;
  ui.messages.append(...MessageView.storedAll(messages).map((view) => view.root));
  scrollToEnd();
}

async function deleteConversation(): Promise<void> {
  const client = connected();
  const id = openId;
  if (id === null || !confirm(`Delete “${ui.title.textContent}” and all its messages?`)) return;
  streaming?.abort();
  await client.call("DeleteConversation", (options) =>
    client.conversations.deleteConversation({ conversationId: id }, options),
  );
  ui.conversations.querySelector(`li[data-id="${CSS.escape(id)}"]`)?.remove();
  history.replaceState(null, "", location.pathname + location.search);
  showConversation(null, "New conversation");
}

/** Follows the address: `#/c/<id>` opens a conversation, anything else starts a new one. */
async function route(): Promise<void> {
  // Leaving a reply that is still streaming stops it.
  streaming?.abort();
  const id = /^#\/c\/(.+)$/.exec(location.hash)?.[1];
  if (id) await openConversation(decodeURIComponent(id));
  else showConversation(null, "New conversation");
}

// ---- sending ----

async function send(content: string): Promise<void> {
  const client = connected();
  const controller = new AbortController();
  streaming = controller;
  setStreaming(true);
  const user = new MessageView(Role.USER, "sending");
  user.appendText(content);
  const reply = new MessageView(Role.ASSISTANT, "streaming");
  ui.messages.append(user.root, reply.root);
  scrollToEnd();
  try {
    await client.call(
      "SendMessage",
      async (options) => {
        const events = client.chat.sendMessage({ conversationId: openId ?? "", content }, options);
        for await (const { event } of events) {
          switch (event.case) {
            case "accepted":
              if (event.value.userMessage) user.accepted(event.value.userMessage);
              if (openId === null) {
                openId = event.value.conversationId;
                history.replaceState(null, "", `#/c/${openId}`);
                ui.delete.hidden = false;
              }
              break;
            case "delta":
              reply.appendText(event.value.text);
              break;
            case "toolCall":
              reply.addToolCall(event.value);
              break;
            case "toolResult":
              reply.applyToolResult(event.value);
              break;
            case "completed":
              reply.completed(event.value);
              break;
          }
          scrollToEnd();
        }
      },
      controller.signal,
    );
  } catch (reason) {
    if (controller.signal.aborted) {
      reply.mark("stopped", "stopped");
    } else {
      if (user.root.dataset.state === "sending") user.mark("failed", "not sent");
      reply.mark("failed", "failed");
      throw reason;
    }
  } finally {
    streaming = null;
    setStreaming(false);
  }
  // The conversation moved to the top of the list (or is new there, named by the service).
  await loadConversations(false);
  const item = ui.conversations.querySelector<HTMLElement>(`li[data-id="${CSS.escape(openId ?? "")}"] a`);
  if (item) ui.title.textContent = item.textContent;
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
ui.stop.addEventListener("click", () => streaming?.abort());

// `?server=` names the service; otherwise the last one used, or a local one.
ui.server.value =
  new URLSearchParams(location.search).get("server") ??
  localStorage.getItem("chat.server") ??
  "http://localhost:50051";
ui.token.value = localStorage.getItem("chat.token") ?? "";
if (ui.token.value) ui.connect.requestSubmit();
