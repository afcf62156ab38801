/**
 * The audit view's pages as HTML: the layout, the login page, sessions with their filters, one
 * session's statements, staff access decisions, the chain's state, and errors. Everything is built
 * with html.ts's `html` tag, so audit text is always escaped; no script, no inline style (the CSP
 * forbids both), no asset from elsewhere. Nothing secret is shown: records hold no tokens or
 * passwords, and bind parameters are left out. Reading the data is audit-reader.ts's.
 */
import { basename } from 'node:path';
import { html, type Html } from './html.js';
import { objectField } from '../../audit/record.js';
import { formatDuration, type SessionRow } from '../../audit/query-report.js';
import { microsToRfc3339, parseTimeMicros } from '../../audit/query-source.js';
import { type ChainState, type Rec, type SessionDetail, type Statement } from './audit-reader.js';
import type { UiRole } from './sessions.js';
import { CLOSE_REASONS } from '../../session/types.js';

/** A record's object field, or an empty one: the views read through absent fields. */
const obj = (v: unknown): Rec => objectField(v) ?? {};
const text = (v: unknown): string => (v === null || v === undefined || v === '' ? '–' : typeof v === 'string' ? v : JSON.stringify(v));

export type Section = 'sessions' | 'staff' | 'chain';

function layout(title: string, role: UiRole | null, section: Section | null, body: Html): Html {
  const nav = (s: Section, label: string): Html => html`<a href="/ui/${s}" ${s === section ? html` aria-current="page"` : ''}>${label}</a>`;
  return html`<!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="referrer" content="no-referrer" />
        <title>${title} · pgwarden audit</title>
        <link rel="stylesheet" href="/ui/style.css" />
      </head>
      <body>
        <header>
          <span class="brand">pgwarden audit</span>
          ${
            role === null
              ? ''
              : html`<nav>${nav('sessions', 'Sessions')}${nav('staff', 'Staff access')}${nav('chain', 'Audit chain')}</nav>
                  <form class="logout" method="post" action="/ui/logout"><span class="role">${role}</span> <button type="submit">Log out</button></form>`
          }
        </header>
        <main>
          <h1>${title}</h1>
          ${body}
        </main>
      </body>
    </html> `;
}

export function loginPage(message: string | null): Html {
  return layout(
    'Log in',
    null,
    null,
    html`${message === null ? '' : html`<p class="error" role="alert">${message}</p>`}
      <form class="login" method="post" action="/ui/login">
        <label for="token">Auditor or operator token</label>
        <input id="token" name="token" type="password" autocomplete="current-password" required autofocus />
        <button type="submit">Log in</button>
      </form>
      <p class="note">
        The view only reads the audit log. The token is checked against <code>[admin] auditor_token_sha256</code> or <code>token_sha256</code> and never stored:
        the browser gets a session cookie instead.
      </p>`,
  );
}

export function errorPage(role: UiRole | null, status: number, message: string): Html {
  return layout(
    status === 404 ? 'Not found' : 'Cannot show this',
    role,
    null,
    html`<p class="error" role="alert">${message}</p>
      <p><a href="/ui/sessions">Back to the sessions</a></p>`,
  );
}

function field(name: string, label: string, value: string | undefined, placeholder = ''): Html {
  return html`<label>${label}<input name="${name}" value="${value ?? ''}" placeholder="${placeholder}" /></label>`;
}

/**
 * When more matched than a page holds: say so, and link the next older page. It keeps the filters
 * and sets `until` (exclusive) one microsecond past the oldest row shown: that row, and any that
 * share its microsecond, show again at the top of the older page rather than on none.
 */
function more(total: number, shown: number, page: Section, form: Readonly<Record<string, string | undefined>>, oldest: unknown): Html | string {
  if (total <= shown) return '';
  let until: string | undefined;
  try {
    if (typeof oldest === 'string') until = microsToRfc3339(parseTimeMicros(oldest) + 1);
  } catch {
    // a record without a readable time: no link, only the advice
  }
  if (until === undefined) return html`<p class="note">Showing the newest ${shown} of ${total}; narrow the filters to see the rest.</p>`;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(form)) if (v !== undefined && k !== 'until') q.set(k, v);
  q.set('until', until);
  return html`<p class="note">Showing the newest ${shown} of ${total}. <a class="older" href="/ui/${page}?${q.toString()}">Older, before ${until}</a></p>`;
}

export interface SessionsForm {
  tenant?: string;
  user?: string;
  staff?: string;
  ticket?: string;
  since?: string;
  until?: string;
  end?: string;
}

/** The `Ended` filter's choices: still open, or any reason a session ends with. */
const END_REASONS: readonly string[] = ['open', ...CLOSE_REASONS];

export function sessionsPage(role: UiRole, form: SessionsForm, rows: readonly SessionRow[], total: number, problem: string | null): Html {
  const endOptions = END_REASONS.map((r) => html`<option value="${r}" ${form.end === r ? html` selected` : ''}>${r}</option>`);
  const custom = form.end !== undefined && !END_REASONS.includes(form.end) ? html`<option value="${form.end}" selected>${form.end}</option>` : '';
  return layout(
    'Sessions',
    role,
    'sessions',
    html`<form class="filters" method="get" action="/ui/sessions">
        ${field('tenant', 'Tenant', form.tenant)}${field('user', 'User', form.user)}${field('staff', 'Staff person', form.staff, 'sub')}${field('ticket', 'Ticket', form.ticket)}
        ${field('since', 'Since', form.since, '2h, 2025-01-31, RFC 3339')}${field('until', 'Until', form.until)}
        <label
          >Ended<select name="end">
            <option value="">any</option>
            ${endOptions}${custom}
          </select></label
        >
        <button type="submit">Filter</button> <a href="/ui/sessions">Clear</a>
      </form>
      ${problem === null ? '' : html`<p class="error" role="alert">${problem}</p>`}
      <p class="count">${total} session${total === 1 ? '' : 's'}</p>
      ${more(total, rows.length, 'sessions', { ...form }, rows.at(-1)?.start)}
      <table class="sessions">
        <thead>
          <tr>
            <th>Start</th>
            <th>Tenant</th>
            <th>User</th>
            <th>Staff</th>
            <th>Ticket</th>
            <th>Client</th>
            <th>TLS</th>
            <th>Duration</th>
            <th>Statements</th>
            <th>Ended</th>
          </tr>
        </thead>
        <tbody>
          ${rows.map(
            (r) =>
              html`<tr>
                <td><a href="/ui/sessions/${encodeURIComponent(r.session)}">${r.start}</a></td>
                <td>${text(r.tenant)}</td>
                <td>${text(r.user)}</td>
                <td>${text(r.staff)}</td>
                <td>${text(r.ticket)}</td>
                <td>${text(r.client)}</td>
                <td>${text(r.tls)}</td>
                <td>${formatDuration(r.duration_ms)}</td>
                <td class="num">${text(r.statements)}</td>
                <td class="end-${r.end === 'open' ? 'open' : 'closed'}">${r.end}</td>
              </tr> `,
          )}
        </tbody>
      </table>`,
  );
}

function resultCell(s: Statement): Html {
  const r = s.result;
  if (r === undefined) return html`<td class="pending">no result recorded</td>`;
  const failed = typeof r['sqlstate'] === 'string';
  return html`<td class="${failed ? 'failed' : 'ok'}">
    ${failed ? html`ERROR ${text(r['sqlstate'])}` : text(r['command_tag'])}${
      typeof r['rows'] === 'number' ? html` · ${r['rows']} row${r['rows'] === 1 ? '' : 's'}` : ''
    }${r['executed'] === false ? ' · not executed' : r['executed'] === 'unknown' && !failed ? ' · outcome unknown' : ''}${typeof r['duration_ms'] === 'number' ? html` · ${r['duration_ms']} ms` : ''}
  </td>`;
}

function facts(pairs: readonly (readonly [string, unknown])[]): Html {
  return html`<dl class="facts">
    ${pairs
      .filter(([, v]) => v !== undefined && v !== null && v !== '')
      .map(
        ([k, v]) =>
          html`<dt>${k}</dt>
            <dd>${text(v)}</dd>`,
      )}
  </dl>`;
}

export function sessionPage(role: UiRole, id: string, d: SessionDetail): Html {
  const start = d.start ?? {};
  const principal = obj(start['principal']);
  const staff = obj(principal['staff']);
  const client = obj(start['client']);
  const end = d.end;
  const access = d.access;
  return layout(
    `Session ${id}`,
    role,
    'sessions',
    html`${d.records === 0 ? html`<p class="error" role="alert">No audit records for this session.</p>` : ''}
      ${facts([
        ['Started', start['time']],
        ['Tenant', start['tenant']],
        ['Kind', principal['kind']],
        ['Database user', principal['db_user']],
        ['Database', principal['database']],
        ['Staff person', staff['sub']],
        ['Ticket', staff['ticket'] ?? staff['reason_or_ticket']],
        ['Access', access === undefined ? undefined : `${text(access['decision'])} ${text(obj(access['target'])['access_level'])}`],
        ['Client', client['addr']],
        ['TLS', obj(client['tls'])['version']],
        [
          'Ended',
          end === undefined
            ? 'open (no session.end yet)'
            : `${text(end['time'])} · ${text(end['reason'])} · ${formatDuration(typeof end['duration_ms'] === 'number' ? end['duration_ms'] : null)}`,
        ],
      ])}
      <h2>Statements (${d.statements.length})</h2>
      ${
        d.statements.length === 0
          ? html`<p class="note">No statements recorded (statement text is kept for staff sessions and for tenants with <code>audit_statements</code>).</p>`
          : html`<table class="statements">
              <thead>
                <tr>
                  <th>#</th>
                  <th>Time</th>
                  <th>Kind</th>
                  <th>Statement</th>
                  <th>Result</th>
                </tr>
              </thead>
              <tbody>
                ${d.statements.map(
                  (s, i) =>
                    html`<tr>
                      <td class="num">${i + 1}</td>
                      <td>${s.time}</td>
                      <td>${s.kind}${s.statementName === null ? '' : html` <span class="note">${s.statementName}</span>`}</td>
                      <td>
                        <pre>${s.query ?? '–'}</pre>
                        ${s.truncated ? html`<span class="note">(truncated)</span>` : ''}
                      </td>
                      ${resultCell(s)}
                    </tr> `,
                )}
              </tbody>
            </table>`
      }`,
  );
}

export interface StaffForm {
  tenant?: string;
  staff?: string;
  ticket?: string;
  since?: string;
  until?: string;
  decision?: string;
}

export function staffPage(role: UiRole, form: StaffForm, rows: readonly Rec[], total: number, problem: string | null): Html {
  const opt = (v: string): Html => html`<option value="${v}" ${form.decision === v ? html` selected` : ''}>${v}</option>`;
  return layout(
    'Staff access decisions',
    role,
    'staff',
    html`<form class="filters" method="get" action="/ui/staff">
        ${field('tenant', 'Tenant', form.tenant)}${field('staff', 'Staff person', form.staff, 'sub')}${field('ticket', 'Ticket', form.ticket)}
        ${field('since', 'Since', form.since, '2h, 2025-01-31, RFC 3339')}${field('until', 'Until', form.until)}
        <label
          >Decision<select name="decision">
            <option value="">any</option>
            ${opt('allow')}${opt('deny')}
          </select></label
        >
        <button type="submit">Filter</button> <a href="/ui/staff">Clear</a>
      </form>
      ${problem === null ? '' : html`<p class="error" role="alert">${problem}</p>`}
      <p class="count">${total} decision${total === 1 ? '' : 's'}</p>
      ${more(total, rows.length, 'staff', { ...form }, rows.at(-1)?.['time'])}
      <table class="staff">
        <thead>
          <tr>
            <th>Time</th>
            <th>Decision</th>
            <th>Reason</th>
            <th>Staff person</th>
            <th>Ticket</th>
            <th>Tenant</th>
            <th>Access</th>
            <th>Client</th>
            <th>Session</th>
          </tr>
        </thead>
        <tbody>
          ${rows.map((r) => {
            const staff = obj(r['staff']);
            const target = obj(r['target']);
            const session = obj(r['session'])['id'];
            const allowed = r['decision'] === 'allow';
            return html`<tr>
              <td>${text(r['time'])}</td>
              <td class="${allowed ? 'ok' : 'failed'}">${text(r['decision'])}</td>
              <td>${allowed ? '' : text(r['reason'])}</td>
              <td>${text(staff['sub'])}${staff['unverified'] === true ? html` <span class="note">(unverified claim)</span>` : ''}</td>
              <td>${text(staff['ticket'] ?? staff['reason_or_ticket'])}</td>
              <td>${text(target['tenant'])}</td>
              <td>${text(target['access_level'])}</td>
              <td>${text(obj(r['client'])['addr'])}</td>
              <td>${allowed && typeof session === 'string' ? html`<a href="/ui/sessions/${encodeURIComponent(session)}">statements</a>` : ''}</td>
            </tr> `;
          })}
        </tbody>
      </table>`,
  );
}

export function chainPage(role: UiRole, c: ChainState): Html {
  const v = c.verify;
  const cp = c.lastCheckpoint;
  const verdict =
    v === null
      ? html`<p class="note">Read from the PostgreSQL store: verify the chain on the files with <code>pgwarden audit verify</code>.</p>`
      : v.ok
        ? html`<p class="ok">
            Chain verified: ${v.records} records in ${v.files} file${v.files === 1 ? '' : 's'}, ${v.checkpoints} checkpoint${v.checkpoints === 1 ? '' : 's'}
            ${v.signaturesChecked ? 'with signatures checked' : 'checked (signatures not checked: no checkpoint key configured)'}; ${v.uncovered}
            record${v.uncovered === 1 ? '' : 's'} after the last checkpoint.
          </p>`
        : html`<p class="failed" role="alert">
            Chain verification FAILED in ${basename(v.firstBad?.file ?? '?')} at line ${v.firstBad?.line ?? '?'}${v.firstBad?.id === undefined ? '' : html` (id ${v.firstBad.id})`}:
            ${v.firstBad?.problem ?? ''}. ${v.records} records before it verified.
          </p>`;
  const read =
    c.read === null
      ? ''
      : html`<p class="note">
          Read now: ${c.read.files} file${c.read.files === 1 ? '' : 's'}. ${c.read.unchanged} rotated file${c.read.unchanged === 1 ? '' : 's'} verified by an earlier
          view and unchanged since (same inode, size and change time) ${c.read.unchanged === 1 ? 'was' : 'were'} not read again; <code>pgwarden audit verify</code> reads
          every file.
        </p>`;
  return layout(
    'Audit chain',
    role,
    'chain',
    html`${verdict}${read}
      <h2>Last checkpoint</h2>
      ${
        cp === undefined
          ? html`<p class="note">No checkpoint written yet${c.source === 'file' ? ' (checkpoints need [audit] checkpoint_key)' : ''}.</p>`
          : facts([
              ['Time', cp['time']],
              ['Records', `seq ${text(cp['first_seq'])}–${text(cp['last_seq'])} (${text(cp['count'])})`],
              ['Head hash', cp['head_hash']],
              ['Key id', cp['key_id']],
              ['Origin', cp['origin']],
              ['Checkpoints', String(c.checkpoints)],
            ])
      }
      <h2>Gap records (${c.gaps.length})</h2>
      ${
        c.gaps.length === 0
          ? html`<p class="ok">No gap records: the writer never had to drop a record.</p>`
          : html`<table class="gaps">
              <thead>
                <tr>
                  <th>Time</th>
                  <th>From seq</th>
                  <th>To seq</th>
                  <th>Cause</th>
                  <th>Dropped (estimate)</th>
                </tr>
              </thead>
              <tbody>
                ${c.gaps.map(
                  (g) =>
                    html`<tr>
                      <td>${text(g['time'])}</td>
                      <td class="num">${text(g['from_seq'])}</td>
                      <td class="num">${text(g['to_seq'])}</td>
                      <td>${text(g['cause'])}</td>
                      <td class="num">${text(g['dropped_estimate'])}</td>
                    </tr> `,
                )}
              </tbody>
            </table>`
      }`,
  );
}
