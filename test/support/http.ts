import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';

/** A request as a test server saw it, its body read to the end. */
export interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** A real HTTP server on 127.0.0.1 and what it saw. */
export interface Served {
  origin: string;
  port: number;
  /** Requests whose body was read to the end. */
  readonly requests: Seen[];
  /** TCP connections accepted. */
  connections(): number;
  /** Responses whose connection closed before they were finished. */
  cutOff(): number;
}

const servers: ReturnType<typeof createServer>[] = [];

/** A server on 127.0.0.1 answering with `handler`, once each request's body has been read; closed by `closeServers()`. */
export async function serve(
  handler: (request: IncomingMessage, response: ServerResponse, seen: Seen) => void,
): Promise<Served> {
  const requests: Seen[] = [];
  let connections = 0;
  let cutOff = 0;
  const server = createServer((request, response) => {
    response.on('close', () => {
      if (!response.writableFinished) cutOff += 1;
    });
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const seen = { method: request.method ?? '', url: request.url ?? '', headers: request.headers, body: '' };
      seen.body = Buffer.concat(chunks).toString('utf8');
      requests.push(seen);
      handler(request, response, seen);
    });
  });
  server.on('connection', () => {
    connections += 1;
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return {
    origin: `http://127.0.0.1:${address.port}`,
    port: address.port,
    requests,
    connections: () => connections,
    cutOff: () => cutOff,
  };
}

/** Closes every server `serve` opened. */
export async function closeServers(): Promise<void> {
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
}

/** Sends 1 KiB chunks until the client goes away (bounded, should it never). */
export function endless(_request: IncomingMessage, response: ServerResponse): void {
  let sent = 0;
  const more = (): void => {
    while (sent < 100_000 && !response.destroyed) {
      sent += 1;
      if (!response.write(Buffer.alloc(1024, 120))) return void response.once('drain', more);
    }
    response.end();
  };
  more();
}
