/**
 * The audit view's session cookie: its name, reading it from a Cookie header, and the Set-Cookie
 * lines that set and clear it. The cookie holds a random session id only (sessions.ts keeps what
 * it stands for); never the token.
 */

export const COOKIE_NAME = 'pgwarden_ui';

/** The value of our cookie in a Cookie header (RFC 6265 §5.4: `name=value` pairs split by `; `). */
export function readSessionCookie(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === COOKIE_NAME) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/**
 * HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it), Path=/ui/ (the
 * API never sees it). No Max-Age: it ends with the browser, and the server ends it sooner.
 * Secure is not set: the admin listener is plain HTTP on loopback (README); a TLS front adds it.
 */
export function setSessionCookie(id: string): string {
  return `${COOKIE_NAME}=${id}; Path=/ui/; HttpOnly; SameSite=Strict`;
}

export function clearSessionCookie(): string {
  return `${COOKIE_NAME}=; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age=0`;
}
