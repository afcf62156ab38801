/**
 * Refused credentials on the admin listener (a bad bearer token on the API, a bad token at the
 * audit view's login) are audited as `admin.command` records, one record each up to
 * REFUSALS_PER_WINDOW a minute; past that they are counted and written as one record with `count`
 * when the window ends, so a token guesser cannot flood the audit log. The API (api.ts) and the
 * audit view (ui/handler.ts) share one window.
 */
import type { AuditSink } from '../audit/log.js';

const REFUSALS_PER_WINDOW = 20;
const REFUSAL_WINDOW_MS = 60_000;

export class RefusalAudit {
  private inWindow = 0;
  private suppressed = 0;
  private windowStart = new Date();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly audit: () => AuditSink) {
    this.timer = setInterval(() => this.roll(), REFUSAL_WINDOW_MS);
    this.timer.unref();
  }

  record(e: { command: string; target: object | null; addr: string }): void {
    if (this.inWindow++ < REFUSALS_PER_WINDOW) {
      this.audit().append({ event: 'admin.command', command: e.command, target: e.target, outcome: { success: false, status: 401 }, client: { addr: e.addr } });
    } else this.suppressed++;
  }

  stop(): void {
    clearInterval(this.timer);
    this.roll();
  }

  private roll(): void {
    const end = new Date();
    if (this.suppressed > 0) {
      this.audit().append({
        event: 'admin.command',
        command: 'refused',
        target: null,
        outcome: { success: false, status: 401 },
        count: this.suppressed,
        window: { start: this.windowStart.toISOString(), end: end.toISOString() },
      });
    }
    this.inWindow = 0;
    this.suppressed = 0;
    this.windowStart = end;
  }
}
