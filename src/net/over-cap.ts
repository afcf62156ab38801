/**
 * The pre-auth cap's refusal: what a connection over the cap hears, decided from its first 8
 * bytes without a TLS handshake or a session. The cap itself is limits/connections.ts's.
 */
import type net from 'node:net';
import { Errors } from '../errors.js';
import { SSL_REFUSED } from '../protocol/backend.js';
import { peekFirstMessage } from '../protocol/frontend.js';

/** The pre-auth cap's answer, built once: it is sent to every connection over the cap. */
const TOO_MANY_CLIENTS = Errors.tooManyClients().toFrame();
/** How long an over-cap connection has to show whether it opens with SSLRequest or GSSENCRequest. */
const OVER_CAP_GRACE_MS = 500;

/**
 * Over the pre-auth cap: PostgreSQL's 53300 (N11), then close, with no TLS handshake (that is
 * what the cap saves). `alreadyRead`: the client's bytes that came with a PROXY header. Never as the answer to an SSLRequest or GSSENCRequest, though (rule 2,
 * CVE-2024-10977: libpq discards such an error and reports only "server sent an error response
 * during SSL exchange"). Those get N, as from a server without TLS; a client that goes on in
 * plaintext (sslmode=prefer) then gets the 53300, one that requires TLS stops at the N. Only the
 * first 8 bytes are looked at, and nothing waits longer than OVER_CAP_GRACE_MS from accept.
 */
export function refuseOverCap(socket: net.Socket, alreadyRead: Buffer | null = null): void {
  let head = Buffer.alloc(0);
  let answeredN = false;
  const refuse = (): void => {
    clearTimeout(timer);
    socket.removeListener('data', onData);
    socket.end(TOO_MANY_CLIENTS);
    setTimeout(() => socket.destroy(), 1000).unref();
  };
  const onData = (d: Buffer): void => {
    if (answeredN) return refuse(); // the plaintext startup after the N
    head = Buffer.concat([head, d]);
    const first = peekFirstMessage(head);
    if (first === null) return;
    if (first === 'ssl_request' || first === 'gssenc_request') {
      answeredN = true;
      socket.write(SSL_REFUSED);
      if (head.length > 8) refuse();
      return;
    }
    // A CancelRequest never gets an answer (R5); over the cap it is not acted on either.
    if (first === 'cancel') {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.destroy();
      return;
    }
    refuse();
  };
  const timer = setTimeout(refuse, OVER_CAP_GRACE_MS);
  socket.on('data', onData);
  socket.once('close', () => clearTimeout(timer));
  // Bytes that followed a PROXY header, and a socket the header reader left paused.
  if (alreadyRead !== null && alreadyRead.length > 0) onData(alreadyRead);
  if (!socket.destroyed) socket.resume();
}
