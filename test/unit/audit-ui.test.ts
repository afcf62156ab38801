/**
 * The audit view's pieces without a browser: HTML escaping and the `html` tag, the session cookie,
 * the in-memory login sessions (idle and absolute expiry, bounds), the login throttle, whose token
 * is whose, the same-origin rule for POSTs, the filter form, the pages' escaping of audit text,
 * the ticket filter, and `[admin] auditor_token_sha256` in the config.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type http from 'node:http';
import { escapeHtml, html, Html } from '../../src/admin/ui/html.js';
import { clearSessionCookie, readSessionCookie, setSessionCookie } from '../../src/admin/ui/cookie.js';
import { IDLE_MS, MAX_AGE_MS, MAX_SESSIONS, UiSessions } from '../../src/admin/ui/sessions.js';
import { LoginThrottle, MAX_FAILURES, WINDOW_MS } from '../../src/admin/ui/throttle.js';
import { tokenRole } from '../../src/admin/tokens.js';
import { isUiPath, parseFilter, sameOrigin, SECURITY_HEADERS } from '../../src/admin/ui/handler.js';
import { chainPage, errorPage, loginPage, sessionPage, sessionsPage, staffPage } from '../../src/admin/ui/pages.js';
import { matches } from '../../src/audit/query-source.js';
import { CLOSE_REASONS } from '../../src/session/types.js';
import { parseConfigText } from '../../src/config/load.js';
import { ConfigError } from '../../src/config/schema.js';

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');
const EVIL = `<script>alert("x")</script>&'"\u202e\u0007`;

describe('audit view: HTML escaping', () => {
  it('escapes the five markup characters and shows control and bidi characters as \\u escapes', () => {
    assert.equal(escapeHtml(`<a href="x" title='y'>&amp;</a>`), '&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;');
    assert.equal(escapeHtml('a\u202eb\u0000c\u2066d\u0085'), 'a\\u202eb\\u0000c\\u2066d\\u0085');
    assert.equal(escapeHtml('tab\tand\nnewline stay'), 'tab\tand\nnewline stay');
    assert.equal(escapeHtml('SELECT 1 — ünïcödé'), 'SELECT 1 — ünïcödé');
  });

  it('the html tag escapes every value, nested Html and arrays of it pass as built', () => {
    const inner = html`<b>${EVIL}</b>`;
    const out = html`<p title="${EVIL}">${inner}${[EVIL, html`<i>ok</i>`]}${null}${undefined}${3}${false}</p>`;
    assert.ok(out instanceof Html);
    assert.ok(!String(out).includes('<script>'));
    assert.equal(String(out).match(/&lt;script&gt;/g)?.length, 3);
    assert.match(String(out), /<b>&lt;script&gt;[^<]*<\/b>&lt;script&gt;[^<]*<i>ok<\/i>3false<\/p>$/);
    assert.match(String(out), /title="&lt;script&gt;alert\(&quot;x&quot;\)&lt;\/script&gt;&amp;&#39;&quot;\\u202e\\u0007"/);
  });

  it('a string that looks like Html is still escaped (only the tag makes Html)', () => {
    const fake = { text: '<script>', toString: () => '<script>' } as unknown as string;
    assert.equal(String(html`${fake}`), '&lt;script&gt;');
  });
});

describe('audit view: session cookie', () => {
  it('is HttpOnly, SameSite=Strict and scoped to /ui/; clearing expires it', () => {
    assert.equal(setSessionCookie('abc'), 'pgwarden_ui=abc; Path=/ui/; HttpOnly; SameSite=Strict');
    assert.equal(clearSessionCookie(), 'pgwarden_ui=; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age=0');
  });

  it('is read from a Cookie header among others', () => {
    assert.equal(readSessionCookie(undefined), undefined);
    assert.equal(readSessionCookie('a=1; pgwarden_ui=xyz; b=2'), 'xyz');
    assert.equal(readSessionCookie('pgwarden_ui_other=1; xpgwarden_ui=2'), undefined);
    assert.equal(readSessionCookie('garbage;;=;pgwarden_ui= v '), 'v');
  });
});

describe('audit view: login sessions', () => {
  const H_OP = sha('op');
  const H_AUD = sha('aud');
  let hashes: Record<string, string | undefined> = { operator: H_OP, auditor: H_AUD };
  const configured = (role: string): string | undefined => hashes[role];

  it('give random ids of 32 bytes that stand for a role until logout', () => {
    const s = new UiSessions();
    const a = s.create('auditor', H_AUD);
    const b = s.create('operator', H_OP);
    assert.match(a, /^[A-Za-z0-9_-]{43}$/);
    assert.notEqual(a, b);
    assert.equal(s.touch(a, configured), 'auditor');
    assert.equal(s.touch(b, configured), 'operator');
    assert.equal(s.end(a, configured), 'auditor');
    assert.equal(s.touch(a, configured), undefined);
    assert.equal(s.end(a, configured), undefined);
    assert.equal(s.touch(undefined, configured), undefined);
    assert.equal(s.touch('not-an-id', configured), undefined);
  });

  it('end after IDLE_MS without a request, and MAX_AGE_MS after login however busy', () => {
    let now = 0;
    const s = new UiSessions(() => now);
    const idle = s.create('auditor', H_AUD);
    const busy = s.create('auditor', H_AUD);
    now = IDLE_MS - 1;
    assert.equal(s.touch(busy, configured), 'auditor');
    now = IDLE_MS + 1;
    assert.equal(s.touch(idle, configured), undefined, 'idle too long');
    for (now = IDLE_MS; now <= MAX_AGE_MS; now += IDLE_MS / 2) assert.equal(s.touch(busy, configured), 'auditor');
    now = MAX_AGE_MS + 1;
    assert.equal(s.touch(busy, configured), undefined, 'past the absolute limit');
    assert.equal(s.size, 0);
  });

  it('end when a reload rotates or removes the token they logged in with', () => {
    const s = new UiSessions();
    const aud = s.create('auditor', H_AUD);
    const op = s.create('operator', H_OP);
    hashes = { operator: H_OP, auditor: sha('rotated') };
    assert.equal(s.touch(aud, configured), undefined);
    assert.equal(s.touch(op, configured), 'operator');
    hashes = { operator: H_OP, auditor: undefined };
    assert.equal(s.touch(op, configured), 'operator');
    hashes = { operator: H_OP, auditor: H_AUD };
    assert.equal(s.touch(aud, configured), undefined, 'gone for good');
  });

  it('hold at most MAX_SESSIONS, dropping the oldest login', () => {
    const s = new UiSessions();
    const first = s.create('auditor', H_AUD);
    for (let i = 0; i < MAX_SESSIONS; i++) s.create('auditor', H_AUD);
    assert.equal(s.size, MAX_SESSIONS);
    assert.equal(s.touch(first, configured), undefined);
  });
});

describe('audit view: login throttle', () => {
  it('refuses an address after MAX_FAILURES in the window, until the window ends; a success clears it', () => {
    let now = 0;
    const t = new LoginThrottle(() => now);
    for (let i = 0; i < MAX_FAILURES; i++) {
      assert.equal(t.allows('10.0.0.1'), true);
      t.failed('10.0.0.1');
    }
    assert.equal(t.allows('10.0.0.1'), false);
    assert.equal(t.allows('10.0.0.2'), true, 'per address');
    now = WINDOW_MS + 1;
    assert.equal(t.allows('10.0.0.1'), true);
    t.failed('10.0.0.3');
    t.succeeded('10.0.0.3');
    for (let i = 0; i < MAX_FAILURES - 1; i++) t.failed('10.0.0.3');
    assert.equal(t.allows('10.0.0.3'), true);
  });
});

describe('audit view: tokens and requests', () => {
  it('tells the operator token from the auditor token; neither hash nor another string matches', () => {
    const creds = { tokenSha256: () => sha('operator-token'), auditorTokenSha256: () => sha('auditor-token') };
    assert.equal(tokenRole('operator-token', creds), 'operator');
    assert.equal(tokenRole('auditor-token', creds), 'auditor');
    assert.equal(tokenRole('other', creds), undefined);
    assert.equal(tokenRole(sha('auditor-token'), creds), undefined);
    assert.equal(tokenRole('auditor-token', { ...creds, auditorTokenSha256: () => undefined }), undefined);
    assert.equal(tokenRole('operator-token', { ...creds, tokenSha256: () => undefined }), undefined);
  });

  it('takes POSTs from its own pages only', () => {
    const req = (headers: Record<string, string>): http.IncomingMessage =>
      ({ headers: { host: '127.0.0.1:9188', ...headers } }) as unknown as http.IncomingMessage;
    assert.equal(sameOrigin(req({ 'sec-fetch-site': 'same-origin', origin: 'null' })), true);
    assert.equal(sameOrigin(req({ 'sec-fetch-site': 'cross-site' })), false);
    assert.equal(sameOrigin(req({ 'sec-fetch-site': 'same-site' })), false);
    assert.equal(sameOrigin(req({ 'sec-fetch-site': 'none' })), false, 'a typed-in POST does not exist; refuse');
    assert.equal(sameOrigin(req({ origin: 'http://127.0.0.1:9188' })), true);
    assert.equal(sameOrigin(req({ origin: 'http://evil.example' })), false);
    assert.equal(sameOrigin(req({ origin: 'null' })), false);
    assert.equal(sameOrigin(req({})), true, 'curl: no browser, no victim');
  });

  it('serves /ui, /ui/… and /favicon.ico; the rest is the API', () => {
    for (const u of ['/ui', '/ui/', '/ui/sessions?ticket=x', '/ui?x', '/favicon.ico']) assert.equal(isUiPath(u), true, u);
    for (const u of ['/uix', '/sessions', '/', '/openapi.json', undefined]) assert.equal(isUiPath(u), false, String(u));
  });

  it('sends the strict CSP and the other security headers', () => {
    assert.equal(
      SECURITY_HEADERS['content-security-policy'],
      "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    assert.equal(SECURITY_HEADERS['x-content-type-options'], 'nosniff');
    assert.equal(SECURITY_HEADERS['referrer-policy'], 'no-referrer');
    assert.equal(SECURITY_HEADERS['cache-control'], 'no-store');
  });

  it('reads the filter form as `pgwarden audit` does, and says what is wrong', () => {
    assert.deepEqual(parseFilter({ tenant: 'acme', ticket: 'INC-1', since: '2025-01-31', until: '2025-02-01T00:00:00Z' }), {
      tenant: 'acme',
      ticket: 'INC-1',
      sinceUs: Date.parse('2025-01-31T00:00:00Z') * 1000,
      untilUs: Date.parse('2025-02-01T00:00:00Z') * 1000,
    });
    assert.match(parseFilter({ since: 'yesterday' }) as string, /"yesterday" is not a time/);
    assert.match(parseFilter({ user: 'x'.repeat(300) }) as string, /^user: at most 256 characters/);
  });

  it('the ticket filter matches a staff record by its ticket', () => {
    const rec = { event: 'session.start', principal: { kind: 'staff', staff: { sub: 'alice', reason_or_ticket: 'INC-4711' } } };
    assert.equal(matches(rec, { ticket: 'INC-4711' }), true);
    assert.equal(matches(rec, { ticket: 'INC-4712' }), false);
    assert.equal(matches({ event: 'session.start', principal: { kind: 'tenant_user' } }, { ticket: 'INC-4711' }), false);
  });
});

describe('audit view: pages', () => {
  const row = {
    session: '01234567-89ab-4cde-8f01-23456789abcd',
    start: '2025-01-31T12:00:00.000000Z',
    tenant: 'acme',
    user: EVIL,
    staff: EVIL,
    ticket: EVIL,
    client: '10.0.0.1',
    tls: 'TLSv1.3',
    duration_ms: 1500,
    statements: 2,
    bytes_in: 1,
    bytes_out: 2,
    end: EVIL,
  };

  it('escape every piece of audit text they show', () => {
    const pages = [
      sessionsPage('auditor', { ticket: EVIL, end: EVIL }, [row], 1, EVIL),
      sessionPage('auditor', row.session, {
        start: { time: 't', tenant: 'acme', principal: { kind: 'staff', db_user: EVIL, staff: { sub: EVIL, reason_or_ticket: EVIL } }, client: { addr: EVIL } },
        end: { time: 't', reason: EVIL, duration_ms: 5 },
        access: { decision: 'allow', target: { access_level: EVIL } },
        statements: [{ ei: 1, time: 't', kind: 'simple', query: EVIL, truncated: true, statementName: EVIL, result: { command_tag: EVIL, rows: 1 } }],
        records: 4,
      }),
      staffPage(
        'auditor',
        { staff: EVIL },
        [{ time: 't', decision: 'deny', reason: EVIL, staff: { sub: EVIL, unverified: true, ticket: EVIL }, target: { tenant: EVIL } }],
        1,
        null,
      ),
      chainPage('auditor', {
        source: 'file',
        verify: { ok: false, records: 3, files: 2, checkpoints: 0, signaturesChecked: false, uncovered: 3, gaps: [], head: null, firstBad: { file: `/var/log/${EVIL}`, line: 4, id: EVIL, problem: EVIL } },
        read: { files: 1, unchanged: 1 },
        lastCheckpoint: { origin: EVIL, head_hash: EVIL },
        checkpoints: 1,
        gaps: [{ cause: EVIL, from_seq: 1, to_seq: 2 }],
      }),
      errorPage('auditor', 503, EVIL),
      loginPage(EVIL),
    ];
    for (const p of pages) {
      const text = String(p);
      assert.ok(!text.includes('<script>'), text);
      assert.ok(text.includes('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;'));
      assert.ok(!text.includes('\u202e') && !text.includes('\u0007'));
      assert.ok(!/\sstyle=|<script|\son[a-z]+=/i.test(text), 'no inline style, script or handler (the CSP forbids them)');
      assert.match(text, /<link rel="stylesheet" href="\/ui\/style\.css" ?\/?>/);
    }
  });

  it('show no bind parameters, only statement text', () => {
    const page = String(
      sessionPage('auditor', row.session, {
        start: undefined,
        end: undefined,
        access: undefined,
        statements: [{ ei: 1, time: 't', kind: 'bind', query: 'SELECT $1', truncated: false, statementName: null, result: undefined }],
        records: 2,
      }),
    );
    assert.match(page, /SELECT \$1/);
    assert.match(page, /no result recorded/);
  });

  it('the login page has a password field and no other secret; the nav shows once logged in', () => {
    const login = String(loginPage(null));
    assert.match(login, /<input id="token" name="token" type="password"/);
    assert.match(login, /<form class="login" method="post" action="\/ui\/login">/);
    assert.ok(!login.includes('Log out'));
    assert.match(String(errorPage('operator', 404, 'x')), /<span class="role">operator<\/span> <button type="submit">Log out<\/button>/);
  });

  it('the Ended filter offers every reason a session can end with, those of staff consent too, and keeps the chosen one', () => {
    const page = String(sessionsPage('auditor', { end: 'staff_withdrawn' }, [], 0, null));
    const options = [...page.matchAll(/<option value="([^"]*)"/g)].map((m) => m[1]);
    assert.deepEqual(options, ['', 'open', ...CLOSE_REASONS]);
    assert.ok(options.includes('transparency_lag') && options.includes('backend_terminated'));
    assert.match(page, /<option value="staff_withdrawn" {2}selected>/);
  });
});

describe('config: [admin] auditor_token_sha256', () => {
  const base = (admin: string): string => `
[server]
listen = "127.0.0.1:6432"
require_tls = false

[admin]
token_sha256 = "${sha('op')}"
${admin}

[tenants.acme]
backend = "postgresql://10.0.0.5:5432/appdb"
backend_tls = "disable"
`;
  const problems = (text: string): readonly string[] => {
    try {
      parseConfigText(text, '/tmp');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      return err.problems;
    }
    return [];
  };

  it('is optional, and read lower-cased', () => {
    assert.equal(parseConfigText(base(''), '/tmp').admin?.auditorTokenSha256, undefined);
    assert.equal(parseConfigText(base(`auditor_token_sha256 = "${sha('aud').toUpperCase()}"`), '/tmp').admin?.auditorTokenSha256, sha('aud'));
  });

  it('must be a SHA-256 in hex, other than the operator token, and is never echoed', () => {
    const bad = problems(base('auditor_token_sha256 = "my-secret-token"'));
    assert.ok(
      bad.some((p) => p.startsWith('admin.auditor_token_sha256: must be the hex SHA-256')),
      bad.join('\n'),
    );
    assert.ok(!bad.join('\n').includes('my-secret-token'));
    const same = problems(base(`auditor_token_sha256 = "${sha('op')}"`));
    assert.ok(
      same.some((p) => p.startsWith('admin.auditor_token_sha256: must differ')),
      same.join('\n'),
    );
  });
});
