/**
 * Folds a relay's counters into the traffic metrics: what moved since the last fold, at scrape
 * time and at the session's end, so the hot path only increments plain numbers.
 */
import type { Metrics } from '../../observability/metrics.js';
import type { Relay } from './relay.js';

export class TrafficFold {
  private bytesIn = 0;
  private bytesOut = 0;
  private messagesIn = 0;
  private messagesOut = 0;
  private queries = 0;
  private transactions = 0;

  fold(m: Metrics, tenant: string, r: Relay): void {
    const s = r.state;
    if (r.bytesIn !== this.bytesIn) m.bytes.inc({ tenant, direction: 'client_to_upstream' }, r.bytesIn - this.bytesIn);
    if (r.bytesOut !== this.bytesOut) m.bytes.inc({ tenant, direction: 'upstream_to_client' }, r.bytesOut - this.bytesOut);
    if (s.messagesIn !== this.messagesIn) m.messages.inc({ tenant, direction: 'client_to_upstream' }, s.messagesIn - this.messagesIn);
    if (s.messagesOut !== this.messagesOut) m.messages.inc({ tenant, direction: 'upstream_to_client' }, s.messagesOut - this.messagesOut);
    if (s.queries !== this.queries) m.queries.inc({ tenant }, s.queries - this.queries);
    if (s.transactions !== this.transactions) m.transactions.inc({ tenant }, s.transactions - this.transactions);
    this.bytesIn = r.bytesIn;
    this.bytesOut = r.bytesOut;
    this.messagesIn = s.messagesIn;
    this.messagesOut = s.messagesOut;
    this.queries = s.queries;
    this.transactions = s.transactions;
  }
}
