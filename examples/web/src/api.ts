// The service, as the page calls it: Connect's grpc-web transport with the user's bearer token,
// and one wrapper that reports how every call ended (its gRPC status and x-request-id).
import { Code, ConnectError, createClient, type CallOptions, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { ChatService } from "./gen/chat/v1/chat_service_pb";
import { ConversationService } from "./gen/chat/v1/conversation_service_pb";

/** How a call ended, for the status line. */
export interface CallReport {
  method: string;
  /** The gRPC status name, such as OK or NOT_FOUND, or NO_RESPONSE when there was no response. */
  code: string;
  /** The response's x-request-id, when there was a response. */
  requestId: string | null;
}

/** The fetch itself failed: no response at all, so no gRPC status either. */
export class Unreachable extends Error {
  override name = "Unreachable";
}

export interface Api {
  readonly server: string;
  readonly chat: Client<typeof ChatService>;
  readonly conversations: Client<typeof ConversationService>;
  /** Runs one call, given the options to pass to it, and reports how it ended. */
  call<T>(method: string, run: (options: CallOptions) => Promise<T>, signal?: AbortSignal): Promise<T>;
}

export function createApi(server: string, token: string, report: (call: CallReport) => void): Api {
  const transport = createGrpcWebTransport({
    baseUrl: server,
    useBinaryFormat: true,
    interceptors: [
      (next) => (request) => {
        request.header.set("authorization", `Bearer ${token}`);
        return next(request);
      },
    ],
    // A browser says nothing to a page about why a request got no response (a refused
    // connection and a refused CORS preflight look the same): mark it, to word it apart.
    fetch: (input, init) =>
      globalThis.fetch(input, init).catch((error: unknown) => {
        if (error instanceof Error && error.name === "AbortError") throw error;
        throw new Unreachable(error instanceof Error ? error.message : String(error));
      }),
  });

  return {
    server,
    chat: createClient(ChatService, transport),
    conversations: createClient(ConversationService, transport),
    async call(method, run, signal) {
      let requestId: string | null = null;
      const options: CallOptions = {
        signal,
        onHeader: (headers) => (requestId = headers.get("x-request-id") ?? requestId),
      };
      try {
        const result = await run(options);
        report({ method, code: "OK", requestId });
        return result;
      } catch (reason) {
        const error = ConnectError.from(reason);
        // An error sent without a message (trailers-only) carries the response headers.
        requestId ??= error.metadata.get("x-request-id");
        report({ method, code: error.cause instanceof Unreachable ? "NO_RESPONSE" : codeName(error.code), requestId });
        throw error;
      }
    },
  };
}

/** The gRPC name of a status code (Connect spells a few of them differently). */
export function codeName(code: Code): string {
  if (code === Code.Canceled) return "CANCELLED";
  return Code[code].replace(/(?<=[a-z])(?=[A-Z])/g, "_").toUpperCase();
}

/** What to tell the user about a failed call: the service's own words, or why there were none. */
export function describeError(reason: unknown, server: string): { code: string; text: string } {
  const error = ConnectError.from(reason);
  if (error.cause instanceof Unreachable) {
    return {
      code: "UNREACHABLE",
      text:
        `No answer from ${server} (${error.cause.message}). Is the service running there, and does ` +
        `its CHAT_CORS_ALLOWED_ORIGINS allow this page's origin, ${location.origin}?`,
    };
  }
  const code = codeName(error.code);
  return { code, text: `${code}: ${error.rawMessage}` };
}
