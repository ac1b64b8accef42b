// DOM for conversations and messages. Text always goes in as text, never as HTML.
import { timestampDate } from "@bufbuild/protobuf/wkt";

import type { MessageCompleted, ToolResult } from "./gen/chat/v1/chat_service_pb";
import type { ConversationMatch } from "./gen/chat/v1/conversation_service_pb";
import {
  MessageStatus,
  Role,
  ToolCallStatus,
  type Conversation,
  type Message,
  type ToolCall,
} from "./gen/chat/v1/resources_pb";

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function conversationItem(conversation: Conversation): HTMLLIElement {
  const item = element("li");
  item.dataset.id = conversation.id;
  const link = element("a", "", conversation.title || "Untitled");
  link.href = `#/c/${conversation.id}`;
  item.append(link);
  if (conversation.updateTime) {
    const time = element("time", "", timestampDate(conversation.updateTime).toLocaleString());
    item.append(time);
  }
  return item;
}

/** A search result: the conversation, and the words of its best message that matched, marked. */
export function searchResult(match: ConversationMatch): HTMLLIElement {
  const conversation = match.conversation;
  const item = element("li");
  item.dataset.id = conversation?.id ?? "";
  item.dataset.messageId = match.messageId;
  const link = element("a", "", conversation?.title || "Untitled");
  link.href = `#/c/${conversation?.id ?? ""}`;
  const snippet = element("p", "snippet");
  snippet.append(
    ...match.snippet.map((part) => (part.highlighted ? element("mark", "", part.text) : document.createTextNode(part.text))),
  );
  item.append(link, snippet);
  return item;
}

/**
 * One message. Its body holds text segments and tool calls in the order they came: a reply may
 * write, call tools, and write again.
 */
export class MessageView {
  readonly root = element("li", "message");
  private readonly badge = element("span", "badge");
  private readonly info = element("span", "info");
  private readonly tools = element("span", "message-tools");
  private readonly body = element("div", "body");
  private text: HTMLElement | null = null;

  constructor(role: Role, state: "stored" | "sending" | "streaming") {
    const name = enumName(Role, role);
    this.root.classList.add(name);
    this.root.dataset.role = name;
    this.root.dataset.state = state;
    this.badge.hidden = true;
    const head = element("div", "head");
    head.append(element("span", "role", name), this.badge, this.info, this.tools);
    this.root.append(head, this.body);
  }

  /**
   * Shows where a stored message stands in its conversation's tree: the message it follows, and,
   * when others follow the same one (its edits, or other replies to the same message), a
   * "‹ n / m ›" whose arrows name the sibling to switch to. A message of the user's can be edited,
   * and a reply generated again.
   */
  placeIn(message: Message): void {
    this.root.dataset.parentId = message.parentId;
    const nav = element("span", "siblings");
    if (message.siblingCount > 1) {
      const index = message.siblingIndex;
      const to = (offset: number, label: string, text: string) => {
        const button = element("button", "sibling", text);
        button.type = "button";
        button.setAttribute("aria-label", label);
        const target = message.siblingIds[index + offset];
        if (target) button.dataset.target = target;
        else button.disabled = true;
        return button;
      };
      nav.append(
        to(-1, "Previous version", "‹"),
        element("span", "sibling-place", `${index + 1} / ${message.siblingCount}`),
        to(1, "Next version", "›"),
      );
    }
    this.offerActions(nav);
  }

  /** The button that edits a message of the user's, or generates a reply again. */
  offerActions(nav: HTMLElement = element("span", "siblings")): void {
    const [name, text] = this.root.dataset.role === "user" ? ["edit", "Edit"] : ["regenerate", "Regenerate"];
    const button = element("button", name, text);
    button.type = "button";
    this.tools.replaceChildren(nav, button);
  }

  /**
   * Stored messages as the page shows them: an assistant message that follows one with tool
   * calls is the next round of the same reply, and goes in the same view.
   */
  static storedAll(messages: Message[]): MessageView[] {
    const views: MessageView[] = [];
    // The reply whose last round called tools, if the previous message was one.
    let calling: MessageView | null = null;
    for (const message of messages) {
      let view: MessageView;
      if (calling && message.role === Role.ASSISTANT) {
        view = calling;
        view.continueWith(message);
      } else {
        view = MessageView.stored(message);
        views.push(view);
      }
      calling = message.role === Role.ASSISTANT && message.toolCalls.length > 0 ? view : null;
    }
    return views;
  }

  static stored(message: Message): MessageView {
    const view = new MessageView(message.role, "stored");
    view.root.dataset.id = message.id;
    if (message.parentId) view.placeIn(message);
    view.appendText(message.content);
    for (const call of message.toolCalls) view.addToolCall(call);
    if (message.status === MessageStatus.CANCELLED) view.mark("cancelled", "cancelled");
    const time = message.createTime ? timestampDate(message.createTime).toLocaleTimeString() : "";
    view.info.textContent = [time, message.model].filter(Boolean).join(" · ");
    return view;
  }

  appendText(text: string): void {
    if (!text) return;
    if (!this.text) {
      this.text = element("div", "text");
      this.body.append(this.text);
    }
    this.text.textContent += text;
  }

  addToolCall(call: ToolCall): void {
    const view = element("div", "tool-call");
    view.dataset.toolCallId = call.id;
    const head = element("div", "tool-head");
    head.append(element("span", "tool-label", "tool call"), element("code", "tool-name", call.name));
    head.append(element("span", "tool-status"));
    view.append(head, element("div", "tool-caption", "arguments"));
    view.append(element("pre", "tool-arguments", prettyJson(call.argumentsJson)));
    this.body.append(view);
    // Text after a tool call is a new segment, below it.
    this.text = null;
    this.setToolResult(view, call.status, call.resultJson);
  }

  applyToolResult(result: ToolResult): void {
    const view = [...this.body.querySelectorAll<HTMLElement>(".tool-call")].find(
      (node) => node.dataset.toolCallId === result.toolCallId,
    );
    if (view) this.setToolResult(view, result.status, result.resultJson);
  }

  /** Shows a call's status, and its result: the JSON of a success, the error of a failure. */
  private setToolResult(view: HTMLElement, status: ToolCallStatus, resultJson: string): void {
    const name = enumName(ToolCallStatus, status);
    view.dataset.status = name;
    const label = view.querySelector<HTMLElement>(".tool-status");
    if (label) {
      label.textContent = name === "unspecified" ? "" : name;
      label.className = `tool-status ${name}`;
    }
    view.querySelector(".tool-outcome")?.remove();
    if (!resultJson) return;
    const outcome = element("div", "tool-outcome");
    const error = status === ToolCallStatus.FAILED ? toolError(resultJson) : null;
    if (error) {
      const line = element("p", "tool-error");
      line.append(element("code", "tool-error-kind", error.kind), element("span", "tool-error-message", error.message));
      outcome.append(element("div", "tool-caption", "error"), line);
    } else {
      outcome.append(element("div", "tool-caption", "result"), element("pre", "tool-result", prettyJson(resultJson)));
    }
    view.append(outcome);
  }

  /**
   * Adds a stored message that continues this reply: the service stores each round of a reply
   * that calls tools as a message of its own, and the page shows them as one reply, as it
   * streamed them.
   */
  continueWith(message: Message): void {
    this.root.dataset.id = message.id;
    this.appendText(message.content);
    for (const call of message.toolCalls) this.addToolCall(call);
    if (message.status === MessageStatus.CANCELLED) this.mark("cancelled", "cancelled");
  }

  accepted(message: Message): void {
    this.root.dataset.id = message.id;
    this.root.dataset.state = "stored";
  }

  completed(done: MessageCompleted): void {
    this.root.dataset.state = "complete";
    if (done.message) this.root.dataset.id = done.message.id;
    const parts = [done.model];
    if (done.finishReason && done.finishReason !== "stop") parts.push(done.finishReason);
    if (done.usage) parts.push(`${done.usage.inputTokens} → ${done.usage.outputTokens} tokens`);
    this.info.textContent = parts.filter(Boolean).join(" · ");
  }

  /** Sets the message's state and a badge that says it. */
  mark(state: string, badge: string): void {
    this.root.dataset.state = state;
    this.badge.textContent = badge;
    this.badge.className = `badge ${state}`;
    this.badge.hidden = false;
  }
}

/** An enum value's name in lower case (`ToolCallStatus.SUCCEEDED` is "succeeded"). */
function enumName(values: Record<number, string>, value: number): string {
  return values[value]?.toLowerCase() ?? "unspecified";
}

/** The `{"error": {"kind", "message"}}` of a failed call's result, if it has that shape. */
function toolError(resultJson: string): { kind: string; message: string } | null {
  try {
    const { error } = JSON.parse(resultJson) as { error?: { kind?: unknown; message?: unknown } };
    if (typeof error?.kind === "string" && typeof error.message === "string") {
      return { kind: error.kind, message: error.message };
    }
  } catch {
    // Not JSON: shown as it is.
  }
  return null;
}

function prettyJson(text: string): string {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}
