/**
 * `sandpool.host.fetch` as the agent uses it: the request shaped so it can cross to the host
 * (a URL object as its text, a Headers object as pairs, a buffer as bytes, the signal kept
 * here), and the answer as a `Response` whose body streams from the host.
 */

/** What the host answers a fetch with before its body. */
interface ResponseHead {
  status: number;
  statusText: string;
  headers: [string, string][];
  url: string;
  redirected: boolean;
}

/** Statuses whose response has no body: `Response` refuses one. */
const NULL_BODY = new Set([101, 103, 204, 205, 304]);

/** The arguments of `fetch(input, init)` as they can cross, and the agent's signal, which stays in the worker. */
export function fetchRequest(args: unknown[]): { args: unknown[]; signal: AbortSignal | null } {
  const [input, init, ...rest] = args;
  const url = input instanceof URL ? input.href : input;
  if (typeof init !== 'object' || init === null) return { args: [url, init, ...rest], signal: null };
  const { signal, headers, body, ...others } = init as Record<string, unknown>;
  const shaped: Record<string, unknown> = { ...others };
  if (headers !== undefined) shaped.headers = headers instanceof Headers ? [...headers] : headers;
  if (body !== undefined) shaped.body = bytesOf(body);
  return {
    args: [url, shaped, ...rest],
    signal: signal instanceof AbortSignal ? signal : null,
  };
}

function bytesOf(body: unknown): unknown {
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body) && !(body instanceof Uint8Array)) {
    return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  }
  return body;
}

/** Whether a response with this head carries a body. */
export function hasBody(head: unknown): boolean {
  return !NULL_BODY.has((head as ResponseHead).status);
}

/** The host's answer as a `Response`: `url` and `redirected` as the host saw them. */
export function toResponse(head: unknown, body: ReadableStream<Uint8Array> | null): Response {
  const { status, statusText, headers, url, redirected } = head as ResponseHead;
  const list = new Headers();
  for (const [name, value] of headers) {
    try {
      list.append(name, value);
    } catch {
      // A value Headers refuses (a NUL byte) cannot be given to the agent as a header.
    }
  }
  let response: Response;
  try {
    response = new Response(body, { status, statusText, headers: list });
  } catch {
    // A status text that is not a reason phrase is left out rather than failing the request.
    response = new Response(body, { status, headers: list });
  }
  Object.defineProperties(response, {
    url: { value: url, enumerable: true },
    redirected: { value: redirected, enumerable: true },
  });
  return response;
}
