// The chat page in a real browser: Debian's Chromium, driven by Playwright, loads the built page
// from Vite's preview server and calls the real service binary over grpc-web, with a real
// PostgreSQL behind it, a fake OpenAI-compatible model that holds its reply back until the page
// has shown the first token, and a real MCP server (the official TypeScript SDK) whose tool the
// model calls. Run `npm run build` first.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { once, EventEmitter } from "node:events";
import { randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, createWriteStream, copyFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { createInterface } from "node:readline";

import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { createClient, ConnectError } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { CallToolRequestSchema, ListToolsRequestSchema } from "@modelcontextprotocol/sdk/types.js";
import { chromium } from "playwright-core";
import { preview } from "vite";

const web = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const root = path.resolve(web, "../..");
const binary = process.env.CHAT_BIN ?? path.join(root, "target/debug/chat-service");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const results = path.join(web, "test-results");
const databaseBase = process.env.DATABASE_URL ?? "postgres://postgres@localhost:5432/chat";
const databaseUrl = databaseBase.replace(/\/[^/?]*(\?|$)/, `/chat_browser_${randomUUID().replaceAll("-", "")}$1`);
const MAX_CONVERSATIONS = 30;
// Only so that a broken page fails rather than hangs: nothing here is timed.
const limit = { timeout: 60_000 };

// ---- the gates ----

function deferred() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}
/** Opened by the test once the page shows the first token; the rest of the reply waits for it. */
const firstTokenShown = deferred();
/** Resolved when the request for the story is closed by the service. */
const storyClosed = deferred();
/** Opened by the test once the page shows the call for Lisbon's weather; the tool answers then. */
const toolCallShown = deferred();
/** Opened by the test once the page shows that call's result; the model's final answer waits. */
const toolResultShown = deferred();
/** Opened by the test once the page was reloaded in the middle of the slow tale. */
const reloaded = deferred();

// ---- the MCP server: one tool, get_weather, over Streamable HTTP with sessions ----

const forecasts = { Lisbon: { forecast: "sunny", celsius: 21 } };

/** One MCP server per session, as the SDK wants it. */
function weatherServer() {
  const server = new Server({ name: "weather", version: "1.0.0" }, { capabilities: { tools: {} } });
  server.setRequestHandler(ListToolsRequestSchema, () => ({
    tools: [
      {
        name: "get_weather",
        description: "Today's weather in a city",
        inputSchema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
      },
    ],
  }));
  server.setRequestHandler(CallToolRequestSchema, async ({ params }) => {
    const city = params.arguments?.city;
    if (!Object.hasOwn(forecasts, city)) {
      return { isError: true, content: [{ type: "text", text: `No weather station in ${city}` }] };
    }
    await toolCallShown.promise;
    const weather = { city, ...forecasts[city] };
    return { structuredContent: weather, content: [{ type: "text", text: JSON.stringify(weather) }] };
  });
  return server;
}

const mcpSessions = new Map();
const mcp = createServer(async (request, response) => {
  const session = request.headers["mcp-session-id"];
  let transport = mcpSessions.get(session);
  if (session && !transport) {
    // The spec's answer to a session that is gone: the client starts a new one.
    response.writeHead(404, { "content-type": "application/json" });
    response.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32001, message: "no such session" }, id: null }));
    return;
  }
  if (!transport) {
    // No session yet: the transport accepts only an initialize request, which opens one.
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: randomUUID,
      onsessioninitialized: (id) => mcpSessions.set(id, transport),
    });
    transport.onclose = () => mcpSessions.delete(transport.sessionId);
    await weatherServer().connect(transport);
  }
  await transport.handleRequest(request, response);
});

// ---- the fake model ----

/** Every request the model was sent, as parsed JSON. */
const modelRequests = [];
/** How many numbered answers the model gave. */
let answers = 0;

const chunk = (delta, finish = null) =>
  `data: ${JSON.stringify({ id: "c", object: "chat.completion.chunk", choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
const toolCall = (fields) => ({ tool_calls: [{ index: 0, ...fields }] });

const model = createServer(async (request, response) => {
  let body = "";
  for await (const part of request) body += part;
  const parsed = JSON.parse(body);
  modelRequests.push(parsed);
  const { messages } = parsed;
  const asked = messages.findLast((m) => m.role === "user")?.content ?? "";
  if (messages[0]?.role === "system" && messages[0].content.startsWith("Write a title")) {
    // The service asks for a title once a new conversation's first reply is told.
    const city = /weather in (\w+)/.exec(asked)?.[1];
    response.writeHead(200, { "content-type": "text/event-stream" });
    response.write(chunk({ role: "assistant", content: "" }));
    response.write(chunk({ content: city ? `"Weather in ${city}"` : `"A friendly hello"` }));
    response.write(chunk({}, "stop"));
    response.end("data: [DONE]\n\n");
    return;
  }
  if (asked.includes("fail")) {
    response.writeHead(500, { "content-type": "application/json" });
    response.end(JSON.stringify({ error: { message: "the fake model's own words" } }));
    return;
  }
  response.writeHead(200, { "content-type": "text/event-stream" });
  response.write(chunk({ role: "assistant", content: "" }));
  const city = /weather in (\w+)/.exec(asked)?.[1];
  if (city) {
    const last = messages.at(-1);
    if (last.role !== "user") {
      // The second round: the model has the tool's result, and answers with it.
      if (city === "Lisbon") await toolResultShown.promise;
      if (last.role !== "tool") {
        response.write(chunk({ content: `The model was not given the tool's result: the last message is the ${last.role}'s.` }));
      } else {
        const result = JSON.parse(last.content);
        if (result.error) {
          response.write(chunk({ content: `Sorry, I could not get the weather: ${result.error.message}.` }));
        } else {
          response.write(chunk({ content: `It is ${result.forecast} in ${result.city}` }));
          response.write(chunk({ content: `, ${result.celsius} °C.` }));
        }
      }
      response.write(chunk({}, "stop"));
    } else {
      // The first round: a little text, then a call whose arguments come in two pieces.
      const id = `call_weather_${city.toLowerCase()}`;
      response.write(chunk({ content: "Let me look that up." }));
      response.write(chunk(toolCall({ id, type: "function", function: { name: "get_weather", arguments: '{"city":' } })));
      response.write(chunk(toolCall({ function: { arguments: ` "${city}"}` } })));
      response.write(chunk({}, "tool_calls"));
    }
  } else if (asked.includes("number")) {
    // Each answer its own, to tell versions apart.
    answers += 1;
    response.write(chunk({ content: `Answer #${answers}` }));
    response.write(chunk({}, "stop"));
  } else if (asked.includes("slow")) {
    response.write(chunk({ content: "Once" }));
    await reloaded.promise;
    response.write(chunk({ content: " upon a time." }));
    response.write(chunk({}, "stop"));
  } else if (asked.includes("story")) {
    // Never finishes: the page stops it.
    response.on("close", storyClosed.resolve);
    response.write(chunk({ content: "Once upon a time" }));
    return;
  } else {
    response.write(chunk({ content: "Hello" }));
    await firstTokenShown.promise;
    response.write(chunk({ content: " from the model" }));
    response.write(chunk({}, "stop"));
  }
  response.end("data: [DONE]\n\n");
});

// ---- the service, its clients, the pages and the browser ----

let service;
let serviceUrl;
const logs = [];
const logged = new EventEmitter();
let registry;
let allowed; // the preview server whose origin the service allows
let foreign; // the same page from another origin
let browser;
let page;
const consoleLines = [];
const scratch = mkdtempSync(path.join(tmpdir(), "chat-page-test-"));
const mcpConfig = path.join(scratch, "mcp.json");

function env(allowedOrigin) {
  return {
    ...process.env,
    DATABASE_URL: databaseUrl,
    CHAT_JWT_SECRET: "browser-test-secret-of-at-least-32-bytes",
    CHAT_LLM_BASE_URL: `http://127.0.0.1:${model.address().port}/v1`,
    CHAT_LLM_MODEL: "fake-model",
    CHAT_LLM_MAX_RETRIES: "0",
    CHAT_LISTEN_ADDR: "127.0.0.1:0",
    CHAT_METRICS_ADDR: "127.0.0.1:0",
    CHAT_LOG_FORMAT: "json",
    CHAT_CORS_ALLOWED_ORIGINS: allowedOrigin,
    CHAT_MAX_CONVERSATIONS_PER_USER: String(MAX_CONVERSATIONS),
    CHAT_MCP_CONFIG: mcpConfig,
    // The test makes many calls in a row; the rate limits are not what it is about.
    CHAT_USER_REQUESTS_PER_SECOND: "1000",
    CHAT_USER_REQUEST_BURST: "1000",
    RUST_LOG: "info",
  };
}

/** The first log line of the service that matches, now or later. */
function waitForLog(matches) {
  const found = logs.find(matches);
  if (found) return Promise.resolve(found);
  return new Promise((resolve) => {
    const listener = (entry) => {
      if (matches(entry)) {
        logged.off("line", listener);
        resolve(entry);
      }
    };
    logged.on("line", listener);
  });
}

async function startPreview() {
  const server = await preview({ root: web, logLevel: "warn", preview: { host: "127.0.0.1", port: 0, strictPort: true } });
  return { server, origin: `http://127.0.0.1:${server.httpServer.address().port}` };
}

const token = (user) => execFileSync(binary, ["token", "--user", user], { env: env(allowed.origin) }).toString().trim();

function clients(bearer) {
  const transport = createGrpcWebTransport({
    baseUrl: serviceUrl,
    useBinaryFormat: true,
    interceptors: [(next) => (request) => (request.header.set("authorization", `Bearer ${bearer}`), next(request))],
  });
  return {
    chat: createClient(registry.getService("chat.v1.ChatService"), transport),
    conversations: createClient(registry.getService("chat.v1.ConversationService"), transport),
  };
}

/** The number of an enum value, by its name in the contract. */
const enumValue = (type, name) => registry.getEnum(type).values.find((v) => v.name === name).number;
/** The name in the contract of an enum value. */
const enumName = (type, number) => registry.getEnum(type).values.find((v) => v.number === number).name;

/** The service's own words for a call that fails: what the page must show. */
async function refusal(call) {
  try {
    await call();
  } catch (error) {
    assert.ok(error instanceof ConnectError);
    return error.rawMessage;
  }
  assert.fail("the call was expected to fail");
}

before(async () => {
  mkdirSync(results, { recursive: true });
  model.listen(0, "127.0.0.1");
  mcp.listen(0, "127.0.0.1");
  await Promise.all([once(model, "listening"), once(mcp, "listening")]);
  const mcpUrl = `http://127.0.0.1:${mcp.address().port}/mcp`;
  writeFileSync(mcpConfig, JSON.stringify({ mcpServers: { weather: { url: mcpUrl } } }));
  allowed = await startPreview();
  foreign = await startPreview();

  const serviceLog = createWriteStream(path.join(results, "service.log"));
  service = spawn(binary, [], { env: env(allowed.origin), stdio: ["ignore", "inherit", "pipe"] });
  createInterface({ input: service.stderr }).on("line", (line) => {
    serviceLog.write(`${line}\n`);
    let entry;
    try {
      entry = JSON.parse(line);
    } catch {
      return;
    }
    logs.push(entry);
    logged.emit("line", entry);
  });
  serviceUrl = await new Promise((resolve, reject) => {
    service.once("exit", (code) => reject(new Error(`the service exited with ${code}`)));
    waitForLog((e) => e.message === "serving gRPC and grpc-web").then((e) => resolve(`http://${e.addr}`));
  });
  // The model is offered the MCP server's tool from here on.
  await waitForLog((e) => e.message === "listed the MCP server's tools" && e.server === "weather" && e.tools === 1);

  const descriptors = execFileSync(path.join(web, "node_modules/.bin/buf"), ["build", path.join(root, "proto"), "-o", "-"]);
  registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, descriptors));

  browser = await chromium.launch({
    executablePath: browserPath,
    headless: true,
    // Playwright gives every launch a fresh, empty profile of its own.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-quic",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  page = await newPage();
}, limit);

after(async () => {
  await browser?.close();
  writeFileSync(path.join(results, "console.log"), consoleLines.map((line) => `${line}\n`).join(""));
  writeFileSync(path.join(results, "model-requests.json"), JSON.stringify(modelRequests, null, 2));
  await Promise.all([allowed?.server.close(), foreign?.server.close()]);
  if (service && service.exitCode === null) {
    service.kill("SIGTERM");
    await once(service, "exit");
  }
  model.closeAllConnections();
  model.close();
  await Promise.all([...mcpSessions.values()].map((transport) => transport.close()));
  mcp.closeAllConnections();
  mcp.close();
  rmSync(scratch, { recursive: true, force: true });
  try {
    const admin = databaseBase.replace(/\/[^/?]*(\?|$)/, "/postgres$1");
    const name = new URL(databaseUrl).pathname.slice(1);
    execFileSync("psql", [admin, "-qc", `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`]);
  } catch {
    // psql is optional: the database is left behind.
  }
});

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const opened = await context.newPage();
  opened.on("console", (message) => consoleLines.push(message.text()));
  opened.on("pageerror", (error) => consoleLines.push(`page error: ${error.message}`));
  return opened;
}

/** Opens the page from `origin`, pastes the token and connects, as the README says. */
async function connect(target, origin, bearer) {
  await target.goto(`${origin}/?server=${encodeURIComponent(serviceUrl)}`);
  await target.fill("#token", bearer);
  await target.click("#connect button[type=submit]");
}

/** Waits until the page's DOM satisfies `condition`, which runs in the page. */
const until = (condition) => page.waitForFunction(condition);

const lastReply = () => page.locator("#messages li[data-role=assistant]").last();
const openId = () => page.evaluate(() => decodeURIComponent(location.hash.replace("#/c/", "")));

async function sendFromPage(text) {
  await page.fill("#input", text);
  await page.click("#send");
}

async function newConversation() {
  await page.click("#new-conversation");
  await until(() => document.querySelector("#title").textContent === "New conversation" && !document.querySelector("#messages").children.length);
}

/** The error the page shows, once it shows one. */
async function shownError(target = page) {
  await target.waitForSelector("#error:not([hidden])");
  return { code: await target.getAttribute("#error", "data-code"), text: await target.textContent("#error") };
}

// ---- the tests ----

test("the conversation list comes a page at a time", limit, async () => {
  const alice = clients(token("alice"));
  for (let i = 1; i <= 22; i++) await alice.conversations.createConversation({ title: `Conversation ${i}` });
  await connect(page, allowed.origin, token("alice"));

  const listed = () => page.$$eval("#conversations li", (items) => items.map((item) => item.dataset.id));
  await page.waitForSelector("#more-conversations:not([hidden])");
  const first = await alice.conversations.listConversations({ pageSize: 20 });
  assert.deepEqual(await listed(), first.conversations.map((c) => c.id));

  await page.click("#more-conversations");
  await page.waitForSelector("#more-conversations[hidden]", { state: "attached" });
  const second = await alice.conversations.listConversations({ pageSize: 20, pageToken: first.nextPageToken });
  assert.equal(second.nextPageToken, "");
  assert.deepEqual(await listed(), [...first.conversations, ...second.conversations].map((c) => c.id));
});

test("a reply arrives token by token, and the page ends with what is stored", limit, async () => {
  await newConversation();
  await sendFromPage("Hi there");

  // The model sends "Hello" and holds the rest back until the page shows it.
  await until(() => {
    const reply = [...document.querySelectorAll("#messages li[data-role=assistant]")].at(-1);
    return reply?.dataset.state === "streaming" && reply.querySelector(".text")?.textContent === "Hello";
  });
  assert.equal(await lastReply().getAttribute("data-state"), "streaming", "the first token is shown before the reply is complete");
  firstTokenShown.resolve();

  await page.waitForSelector("#messages li[data-role=assistant][data-state=complete]");
  const shown = (await lastReply().locator(".text").allTextContents()).join("");
  const id = await openId();
  const stored = await clients(token("alice")).conversations.getConversation({ conversationId: id });
  assert.deepEqual(stored.messages.map((m) => m.content), ["Hi there", "Hello from the model"]);
  assert.equal(shown, stored.messages[1].content);
  assert.equal(stored.messages[1].status, enumValue("chat.v1.MessageStatus", "MESSAGE_STATUS_COMPLETE"));
});

test("the page shows the x-request-id of the last call", limit, async () => {
  const id = await openId();
  await page.click(`#conversations li[data-id="${id}"] a`);
  await page.waitForSelector("#status[data-method=GetConversation][data-code=OK]");
  const requestId = await page.getAttribute("#status", "data-request-id");
  assert.ok(requestId, "the page read x-request-id from the response");
  assert.match(await page.textContent("#status"), new RegExp(`request id ${requestId}$`));
  // It is the id the service gave that call.
  const line = await waitForLog((e) => e.message === "rpc finished" && e.span?.request_id === requestId);
  assert.equal(line.method, "/chat.v1.ConversationService/GetConversation");
});

test("search finds a conversation by its words, marks them, and opens it", limit, async () => {
  const id = await openId();
  await newConversation();
  await page.fill("#search-query", "model");
  await page.press("#search-query", "Enter");
  await page.waitForSelector("#status[data-method=SearchConversations][data-code=OK]");
  const shown = await page.$$eval("#search-results li[data-id]", (items) =>
    items.map((item) => ({ id: item.dataset.id, marked: [...item.querySelectorAll("mark")].map((m) => m.textContent) })),
  );
  // What the service found, in its order, with its words marked as the service marked them.
  const found = await clients(token("alice")).conversations.searchConversations({ query: "model" });
  assert.deepEqual(
    shown,
    found.matches.map((m) => ({ id: m.conversation.id, marked: m.snippet.filter((p) => p.highlighted).map((p) => p.text) })),
  );
  assert.deepEqual(shown.find((r) => r.id === id)?.marked, ["model"]);
  assert.equal(await page.isHidden("#conversations"), true);

  await page.click(`#search-results li[data-id="${id}"] a`);
  await page.waitForSelector("#messages li[data-role=assistant][data-state=stored]");
  assert.equal(await openId(), id);

  // Nothing found says so; clearing the box brings the list back.
  await page.fill("#search-query", "zebra");
  await page.press("#search-query", "Enter");
  await page.waitForSelector("#search-results li.empty");
  await page.fill("#search-query", "");
  await page.dispatchEvent("#search-query", "search");
  await page.waitForSelector("#search-results[hidden]", { state: "attached" });
  assert.equal(await page.isVisible("#conversations"), true);
});

/** The last reply as the page shows it: its text segments and tool calls, in order. */
const shownReply = () =>
  lastReply()
    .locator(".body")
    .evaluate((body) =>
      [...body.children].map((node) => {
        if (node.matches(".text")) return { text: node.textContent };
        const part = (selector) => node.querySelector(selector)?.textContent;
        return {
          call: {
            id: node.dataset.toolCallId,
            name: part(".tool-name"),
            arguments: JSON.parse(part(".tool-arguments")),
            status: part(".tool-status"),
            result: node.querySelector(".tool-result") ? JSON.parse(part(".tool-result")) : null,
            error: node.querySelector(".tool-error") ? { kind: part(".tool-error-kind"), message: part(".tool-error-message") } : null,
          },
        };
      }),
    );

/** What the page should show of a reply stored as `messages` (its rounds, then its last message). */
function expectedReply(messages) {
  return messages.flatMap((message) => [
    ...(message.content ? [{ text: message.content }] : []),
    ...message.toolCalls.map((call) => {
      const status = enumName("chat.v1.ToolCallStatus", call.status).replace("TOOL_CALL_STATUS_", "").toLowerCase();
      const result = call.resultJson ? JSON.parse(call.resultJson) : null;
      return {
        call: {
          id: call.id,
          name: call.name,
          arguments: JSON.parse(call.argumentsJson),
          status,
          result: status === "failed" ? null : result,
          error: status === "failed" ? result.error : null,
        },
      };
    }),
  ]);
}

/** Opens the conversation again, from the list: the page shows it as GetConversation returns it. */
async function reopen(id) {
  await page.click(`#conversations li[data-id="${id}"] a`);
  await page.waitForSelector("#messages li[data-role=assistant][data-state=stored]");
}

test("a tool call runs on the MCP server; the page shows it, then its result, live and as stored", limit, async () => {
  await newConversation();
  await sendFromPage("What's the weather in Lisbon?");

  // The call is shown, with its name and arguments, while it runs: the tool answers only then.
  await page.waitForSelector("#messages .tool-call[data-status=requested]");
  const call = { id: "call_weather_lisbon", name: "get_weather", arguments: { city: "Lisbon" } };
  assert.deepEqual(await shownReply(), [
    { text: "Let me look that up." },
    { call: { ...call, status: "requested", result: null, error: null } },
  ]);
  toolCallShown.resolve();

  // Its result is shown before the reply is complete: the model's answer waits for that.
  await page.waitForSelector("#messages .tool-call[data-status=succeeded]");
  assert.equal(await lastReply().getAttribute("data-state"), "streaming", "the result is shown before the reply is complete");
  const weather = { city: "Lisbon", forecast: "sunny", celsius: 21 };
  assert.deepEqual(await shownReply(), [
    { text: "Let me look that up." },
    { call: { ...call, status: "succeeded", result: weather, error: null } },
  ]);
  toolResultShown.resolve();

  await page.waitForSelector("#messages li[data-role=assistant][data-state=complete]");
  const streamed = await shownReply();
  assert.deepEqual(streamed.at(-1), { text: "It is sunny in Lisbon, 21 °C." }, "the model answered with the tool's result");

  // What the page showed is what the service stored: the round with its call, then the answer.
  const id = await openId();
  const stored = await clients(token("alice")).conversations.getConversation({ conversationId: id });
  assert.deepEqual(
    stored.messages.map((m) => [enumName("chat.v1.Role", m.role), m.content, m.toolCalls.length]),
    [
      ["ROLE_USER", "What's the weather in Lisbon?", 0],
      ["ROLE_ASSISTANT", "Let me look that up.", 1],
      ["ROLE_ASSISTANT", "It is sunny in Lisbon, 21 °C.", 0],
    ],
  );
  assert.deepEqual(streamed, expectedReply(stored.messages.slice(1)));

  // The model was offered the MCP server's tool, and then given the call and its result.
  const asked = modelRequests.filter((r) => r.messages.findLast((m) => m.role === "user").content === "What's the weather in Lisbon?");
  assert.equal(asked.length, 2);
  assert.ok(asked[0].tools.some((tool) => tool.function.name === "get_weather"), "get_weather is offered");
  const [round, answer] = asked[1].messages.slice(-2);
  assert.deepEqual(round.tool_calls.map((c) => [c.id, c.function.name, JSON.parse(c.function.arguments)]), [[call.id, call.name, call.arguments]]);
  assert.equal(answer.role, "tool");
  assert.equal(answer.tool_call_id, call.id);
  assert.deepEqual(JSON.parse(answer.content), JSON.parse(stored.messages[1].toolCalls[0].resultJson));

  await reopen(id);
  assert.deepEqual(await shownReply(), streamed, "as stored, the reply is shown as it streamed");
});

test("a tool call that fails is shown as failed, in the tool's own words, as streamed and as stored", limit, async () => {
  await newConversation();
  await sendFromPage("What's the weather in Atlantis?");
  await page.waitForSelector("#messages li[data-role=assistant][data-state=complete]");
  const streamed = await shownReply();
  const error = { kind: "tool_error", message: "No weather station in Atlantis" };
  assert.deepEqual(streamed, [
    { text: "Let me look that up." },
    { call: { id: "call_weather_atlantis", name: "get_weather", arguments: { city: "Atlantis" }, status: "failed", result: null, error } },
    { text: "Sorry, I could not get the weather: No weather station in Atlantis." },
  ]);

  const id = await openId();
  const stored = await clients(token("alice")).conversations.getConversation({ conversationId: id });
  assert.deepEqual(streamed, expectedReply(stored.messages.slice(1)));
  await reopen(id);
  assert.deepEqual(await shownReply(), streamed, "as stored, the reply is shown as it streamed");
});

test("stop cancels the reply, and the service stores it as cancelled", limit, async () => {
  await newConversation();
  await sendFromPage("Tell me a long story");
  await until(() => [...document.querySelectorAll("#messages li[data-role=assistant]")].at(-1)?.querySelector(".text")?.textContent === "Once upon a time");
  await page.click("#stop");
  await page.waitForSelector("#messages li[data-role=assistant][data-state=stopped]");
  const id = await openId();

  // The service aborts the model's request and stores what it had.
  await storyClosed.promise;
  await waitForLog((e) => e.message === "turn ended" && e.conversation_id === id);
  const stored = await clients(token("alice")).conversations.getConversation({ conversationId: id });
  assert.deepEqual(stored.messages.map((m) => m.content), ["Tell me a long story", "Once upon a time"]);
  assert.equal(stored.messages[1].status, enumValue("chat.v1.MessageStatus", "MESSAGE_STATUS_CANCELLED"));

  await page.click(`#conversations li[data-id="${id}"] a`);
  await page.waitForSelector("#messages li[data-role=assistant][data-state=cancelled]");
  assert.equal(await lastReply().locator(".badge").textContent(), "cancelled");
});

test("deleting a conversation; one that is gone is NOT_FOUND, in the service's words", limit, async () => {
  const id = await openId();
  page.once("dialog", (dialog) => dialog.accept());
  await page.click("#delete");
  await page.waitForSelector(`#conversations li[data-id="${id}"]`, { state: "detached" });
  const alice = clients(token("alice"));
  const words = await refusal(() => alice.conversations.getConversation({ conversationId: id }));

  await page.evaluate((gone) => (location.hash = `#/c/${gone}`), id);
  assert.deepEqual(await shownError(), { code: "NOT_FOUND", text: `NOT_FOUND: ${words}` });
});

test("a model that fails is UNAVAILABLE, in the service's words", limit, async () => {
  await newConversation();
  await sendFromPage("please fail");
  const shown = await shownError();
  await page.waitForSelector("#messages li[data-role=assistant][data-state=failed]");
  const words = await refusal(async () => {
    for await (const _ of clients(token("alice")).chat.sendMessage({ content: "please fail" }));
  });
  assert.deepEqual(shown, { code: "UNAVAILABLE", text: `UNAVAILABLE: ${words}` });
  assert.doesNotMatch(shown.text, /own words/, "the upstream's own words are not passed on");
});

test("a limit is RESOURCE_EXHAUSTED, in the service's words", limit, async () => {
  const bob = clients(token("bob"));
  for (let i = 0; i < MAX_CONVERSATIONS; i++) await bob.conversations.createConversation({ title: `Bob's ${i}` });
  const words = await refusal(async () => {
    for await (const _ of bob.chat.sendMessage({ content: "One more" }));
  });

  const bobs = await newPage();
  try {
    await connect(bobs, allowed.origin, token("bob"));
    await bobs.waitForSelector("#status[data-method=ListConversations][data-code=OK]");
    await bobs.fill("#input", "One more");
    await bobs.click("#send");
    assert.deepEqual(await shownError(bobs), { code: "RESOURCE_EXHAUSTED", text: `RESOURCE_EXHAUSTED: ${words}` });
  } finally {
    await bobs.context().close();
  }
});

test("a bad token is UNAUTHENTICATED, in the service's words", limit, async () => {
  const words = await refusal(() => clients("not-a-token").conversations.listConversations({}));
  const other = await newPage();
  try {
    await connect(other, allowed.origin, "not-a-token");
    assert.deepEqual(await shownError(other), { code: "UNAUTHENTICATED", text: `UNAUTHENTICATED: ${words}` });
  } finally {
    await other.context().close();
  }
});

test("the same page from an origin the service does not allow is refused by CORS", limit, async () => {
  const other = await newPage();
  try {
    const refused = other.waitForEvent("console", (message) => /blocked by CORS policy/.test(message.text()));
    await connect(other, foreign.origin, token("alice"));
    const shown = await shownError(other);
    assert.equal(shown.code, "UNREACHABLE");
    assert.match(shown.text, new RegExp(`allow this page's origin, ${foreign.origin}\\?`));
    assert.match((await refused).text(), new RegExp(`from origin '${foreign.origin}' has been blocked by CORS policy`));
    assert.equal(await other.getAttribute("#status", "data-code"), "NO_RESPONSE");
    assert.equal(await other.getAttribute("#status", "data-request-id"), "");
    assert.equal(await other.locator("#conversations li").count(), 0);
  } finally {
    await other.context().close();
  }
});

/** Asks `check` until it returns something, for effects no event announces; at most 10 s. */
async function eventually(check) {
  for (const deadline = Date.now() + 10_000; ; ) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, "the expected state was never reached");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test("the model names a new conversation; the page shows its title", limit, async () => {
  const alice = clients(token("alice"));
  const found = await alice.conversations.searchConversations({ query: '"weather in Lisbon"' });
  const id = found.matches[0].conversation.id;
  // Named in the background once its first reply was told.
  await eventually(async () => {
    const { conversation } = await alice.conversations.getConversation({ conversationId: id });
    return conversation.title === "Weather in Lisbon";
  });
  // A fresh page lists it, and opens it, under the model's title.
  await page.evaluate((opened) => (location.hash = `#/c/${opened}`), id);
  await page.reload();
  await page.waitForSelector("#messages li[data-role=assistant][data-state=stored] .tool-call[data-status=succeeded]");
  assert.equal(await page.textContent("#title"), "Weather in Lisbon");
  assert.equal(await page.textContent(`#conversations li[data-id="${id}"] a`), "Weather in Lisbon");
});

/** What the model was shown for the newest reply (title requests aside), as [role, content]. */
function lastShownToModel() {
  const request = modelRequests.findLast((r) => r.messages[0]?.role !== "system");
  return request.messages.map((m) => [m.role, m.content]);
}

/** The open branch as the page shows it: each message's text, and its "n / m" if it has versions. */
const shownBranch = () =>
  page.$$eval("#messages li.message", (items) =>
    items.map((item) => [
      [...item.querySelectorAll(".text")].map((node) => node.textContent).join(""),
      item.querySelector(".sibling-place")?.textContent ?? "",
    ]),
  );

/** The open branch as the service stores it, in the same shape. */
async function storedBranch(id) {
  const { messages } = await clients(token("alice")).conversations.getConversation({ conversationId: id });
  return messages.map((m) => [m.content, m.siblingCount > 1 ? `${m.siblingIndex + 1} / ${m.siblingCount}` : ""]);
}

/** Waits until the page shows `expected` as the branch. */
const untilBranch = (expected) =>
  page.waitForFunction(
    (want) =>
      JSON.stringify(
        [...document.querySelectorAll("#messages li.message")].map((item) => [
          [...item.querySelectorAll(".text")].map((node) => node.textContent).join(""),
          item.querySelector(".sibling-place")?.textContent ?? "",
        ]),
      ) === JSON.stringify(want),
    expected,
  );

let branched;

test("an edit starts a branch that the model sees alone, and the page moves between versions", limit, async () => {
  await newConversation();
  await sendFromPage("First, a number");
  await page.waitForSelector("#messages li[data-role=assistant][data-state=complete] button.regenerate");
  await sendFromPage("Second, a number");
  await until(() => document.querySelectorAll("#messages li[data-role=assistant][data-state=complete]").length === 2);
  branched = await openId();
  const before = await shownBranch();
  assert.deepEqual(before, await storedBranch(branched));

  const second = page.locator("#messages li[data-role=user]").nth(1);
  await second.locator("button.edit").click();
  await second.locator(".editor textarea").fill("Second, edited, a number");
  const next = answers + 1;
  await second.locator(".editor button.save").click();
  const [first, firstAnswer] = before;
  const edited = [first, firstAnswer, ["Second, edited, a number", "2 / 2"], [`Answer #${next}`, ""]];
  await untilBranch(edited);
  assert.deepEqual(await storedBranch(branched), edited);
  assert.deepEqual(lastShownToModel(), [
    ["user", "First, a number"],
    ["assistant", firstAnswer[0]],
    ["user", "Second, edited, a number"],
  ]);

  // Back to the first version, and forth again.
  await second.locator("button.sibling[aria-label='Previous version']").click();
  const original = [first, firstAnswer, [before[2][0], "1 / 2"], before[3]];
  await untilBranch(original);
  assert.deepEqual(await storedBranch(branched), original);
  await page.locator("#messages li[data-role=user]").nth(1).locator("button.sibling[aria-label='Next version']").click();
  await untilBranch(edited);
  assert.deepEqual(await storedBranch(branched), edited);
});

test("another reply is a sibling of the first, and the model is not shown the first", limit, async () => {
  const before = await shownBranch();
  const again = [...before.slice(0, 3), [`Answer #${answers + 1}`, "2 / 2"]];
  await lastReply().locator("button.regenerate").click();
  await untilBranch(again);
  assert.deepEqual(await storedBranch(branched), again);
  assert.deepEqual(lastShownToModel(), [
    ["user", "First, a number"],
    ["assistant", before[1][0]],
    ["user", "Second, edited, a number"],
  ]);

  await lastReply().locator("button.sibling[aria-label='Previous version']").click();
  const first = [...before.slice(0, 3), [before[3][0], "1 / 2"]];
  await untilBranch(first);
  assert.deepEqual(await storedBranch(branched), first);
  await lastReply().locator("button.sibling[aria-label='Next version']").click();
  await untilBranch(again);
});

test("a reload in the middle of a reply picks it up, and the page ends with what is stored", limit, async () => {
  await newConversation();
  await sendFromPage("Tell me a slow tale");
  await until(() => [...document.querySelectorAll("#messages li[data-role=assistant]")].at(-1)?.querySelector(".text")?.textContent === "Once");
  const id = await openId();
  const kept = JSON.parse(await page.evaluate(() => sessionStorage.getItem("chat.pending")));
  assert.equal(kept.conversationId, id);
  assert.equal(kept.text, "Once");

  await page.reload();
  // The page connects again, shows the conversation as stored, and the reply as it was.
  await until(() => {
    const reply = [...document.querySelectorAll("#messages li[data-role=assistant]")].at(-1);
    return reply?.dataset.state === "streaming" && reply.querySelector(".text")?.textContent === "Once";
  });
  reloaded.resolve();
  await page.waitForSelector("#messages li[data-role=assistant][data-state=complete]");
  const stored = await clients(token("alice")).conversations.getConversation({ conversationId: id });
  assert.deepEqual(stored.messages.map((m) => m.content), ["Tell me a slow tale", "Once upon a time."]);
  assert.equal((await lastReply().locator(".text").allTextContents()).join(""), stored.messages[1].content);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("chat.pending")), null);
});

test("a screenshot of the page, with a reply that has another version", limit, async () => {
  await page.evaluate((opened) => (location.hash = `#/c/${opened}`), branched);
  await untilBranch(await storedBranch(branched));
  await page.waitForSelector("#messages li[data-role=assistant] .sibling-place");
  const file = path.join(results, "chat-page.png");
  await page.screenshot({ path: file });
  if (process.env.UPDATE_SCREENSHOT) copyFileSync(file, path.join(web, "screenshot.png"));
});
