// Calls every RPC the way a browser does, through Connect's grpc-web transport over fetch, against
// the real service binary, a real PostgreSQL and a fake OpenAI-compatible model that holds its
// reply back until the client has seen the first delta.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { once } from "node:events";
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { createInterface } from "node:readline";

import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { createClient, Code, ConnectError } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const binary = process.env.CHAT_BIN ?? path.join(root, "target/debug/chat-service");
const databaseBase = process.env.DATABASE_URL ?? "postgres://postgres@localhost:5432/chat";
const databaseUrl = databaseBase.replace(/\/[^/?]*(\?|$)/, `/chat_grpcweb_${randomUUID().replaceAll("-", "")}$1`);
const secret = "grpc-web-test-secret-of-at-least-32-bytes";
const origin = "http://app.example";

// The model: one delta at once, the rest only after `release()`.
let release;
const released = new Promise((resolve) => (release = resolve));
const chunk = (delta, finish = null) =>
  `data: ${JSON.stringify({ id: "c", object: "chat.completion.chunk", choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
const model = createServer(async (request, response) => {
  for await (const _ of request);
  response.writeHead(200, { "content-type": "text/event-stream" });
  response.write(chunk({ role: "assistant", content: "" }));
  response.write(chunk({ content: "Hello" }));
  await released;
  response.write(chunk({ content: " from the model" }));
  response.write(chunk({}, "stop"));
  response.end("data: [DONE]\n\n");
});

let service;
let baseUrl;
let registry;
let chat;
let conversations;
let token;

function env() {
  return {
    ...process.env,
    DATABASE_URL: databaseUrl,
    CHAT_JWT_SECRET: secret,
    CHAT_LLM_BASE_URL: `http://127.0.0.1:${model.address().port}/v1`,
    CHAT_LLM_MODEL: "fake-model",
    CHAT_LISTEN_ADDR: "127.0.0.1:0",
    CHAT_METRICS_ADDR: "127.0.0.1:0",
    CHAT_LOG_FORMAT: "json",
    CHAT_CORS_ALLOWED_ORIGINS: origin,
    RUST_LOG: "info",
  };
}

before(async () => {
  model.listen(0, "127.0.0.1");
  await once(model, "listening");

  service = spawn(binary, [], { env: env(), stdio: ["ignore", "inherit", "pipe"] });
  const lines = createInterface({ input: service.stderr });
  baseUrl = await new Promise((resolve, reject) => {
    service.once("exit", (code) => reject(new Error(`the service exited with ${code}`)));
    lines.on("line", (line) => {
      let entry;
      try { entry = JSON.parse(line); } catch { return; }
      if (entry.message === "serving gRPC and grpc-web") resolve(`http://${entry.addr}`);
    });
  });

  token = execFileSync(binary, ["token", "--user", "browser-user"], { env: env() }).toString().trim();
  const descriptors = execFileSync(path.join(here, "node_modules/.bin/buf"), ["build", path.join(root, "proto"), "-o", "-"]);
  registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, descriptors));
  const transport = createGrpcWebTransport({
    baseUrl,
    useBinaryFormat: true,
    interceptors: [(next) => (request) => {
      request.header.set("authorization", `Bearer ${token}`);
      return next(request);
    }],
  });
  chat = createClient(registry.getService("chat.v1.ChatService"), transport);
  conversations = createClient(registry.getService("chat.v1.ConversationService"), transport);
});

after(async () => {
  if (service && service.exitCode === null) {
    service.kill("SIGTERM");
    const [code] = await once(service, "exit");
    assert.equal(code, 0, "the service exits 0 after SIGTERM");
  }
  model.close();
  try {
    const admin = databaseBase.replace(/\/[^/?]*(\?|$)/, "/postgres$1");
    const name = new URL(databaseUrl).pathname.slice(1);
    execFileSync("psql", [admin, "-qc", `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`]);
  } catch {
    // psql is optional: the database is left behind.
  }
});

test("CORS preflight allows the configured origin and exposes gRPC headers", async () => {
  const response = await fetch(`${baseUrl}/chat.v1.ChatService/SendMessage`, {
    method: "OPTIONS",
    headers: {
      origin,
      "access-control-request-method": "POST",
      "access-control-request-headers": "authorization,content-type,x-grpc-web",
    },
  });
  assert.equal(response.headers.get("access-control-allow-origin"), origin);
  const allowed = response.headers.get("access-control-allow-headers") ?? "";
  assert.match(allowed, /authorization/);
  const foreign = await fetch(`${baseUrl}/chat.v1.ChatService/SendMessage`, {
    method: "OPTIONS",
    headers: { origin: "http://evil.example", "access-control-request-method": "POST" },
  });
  assert.equal(foreign.headers.get("access-control-allow-origin"), null);
});

test("every RPC works over grpc-web, and SendMessage streams incrementally", async () => {
  const created = await conversations.createConversation({ title: "From a browser" });
  const id = created.conversation.id;
  assert.equal(created.conversation.title, "From a browser");

  const events = [];
  for await (const response of chat.sendMessage({ conversationId: id, content: "Hi from grpc-web" })) {
    events.push(response.event);
    // The model holds the rest of its reply until the first delta is here: had the service
    // buffered the stream, this would never happen and the test would time out.
    if (response.event.case === "delta" && events.filter((e) => e.case === "delta").length === 1) release();
  }
  assert.deepEqual(events.map((e) => e.case), ["accepted", "delta", "delta", "completed"]);
  const text = events.filter((e) => e.case === "delta").map((e) => e.value.text).join("");
  assert.equal(text, "Hello from the model");
  assert.equal(events.at(-1).value.message.content, text);

  const listed = await conversations.listConversations({ pageSize: 10 });
  assert.deepEqual(listed.conversations.map((c) => c.id), [id]);
  const fetched = await conversations.getConversation({ conversationId: id });
  assert.deepEqual(fetched.messages.map((m) => m.content), ["Hi from grpc-web", "Hello from the model"]);
  const page = await conversations.listMessages({ conversationId: id, pageSize: 1 });
  assert.equal(page.messages.length, 1);
  assert.notEqual(page.nextPageToken, "");
  await conversations.deleteConversation({ conversationId: id });

  await assert.rejects(conversations.getConversation({ conversationId: id }), (error) => {
    assert.ok(error instanceof ConnectError);
    assert.equal(error.code, Code.NotFound);
    return true;
  });
});

test("errors arrive as gRPC statuses a browser can read", async () => {
  await assert.rejects(conversations.getConversation({ conversationId: "not-a-uuid" }), (error) => {
    assert.equal(error.code, Code.InvalidArgument);
    assert.match(error.rawMessage, /conversation_id/);
    return true;
  });
  const anonymous = createClient(
    registry.getService("chat.v1.ConversationService"),
    createGrpcWebTransport({ baseUrl, useBinaryFormat: true }),
  );
  await assert.rejects(anonymous.listConversations({}), (error) => {
    assert.equal(error.code, Code.Unauthenticated);
    return true;
  });
});
