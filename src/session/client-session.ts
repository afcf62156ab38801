/**
 * One client connection, start to end, as a state machine:
 *   accept → negotiating (SSLRequest/GSSENCRequest/CancelRequest/startup) → tls_handshake →
 *   authenticating (SCRAM) → connecting (upstream login) → relaying → closed.
 * `phase` changes only in this file. Protocol bytes come from protocol/, policy from routing/
 * and auth/, the upstream from pool/. Every callback runs inside this session's error boundary:
 * a throw ends this connection, never the process.
 */
import { randomUUID } from 'node:crypto';
import { isIPv4, type Socket } from 'node:net';
import tls from 'node:tls';
import type { Config, LimitSettings, TenantConfig, UserConfig } from '../config/schema.js';
import { Errors, PgError, sanitizeName } from '../errors.js';
import {
  AUTHENTICATION_CLEARTEXT_PASSWORD,
  AUTHENTICATION_OK,
  encodeAuthenticationSASL,
  encodeAuthenticationSASLContinue,
  encodeAuthenticationSASLFinal,
  encodeBackendKeyData,
  encodeNegotiateProtocolVersion,
  encodeParameterStatus,
  encodeReadyForQuery,
  SSL_ACCEPTED,
  SSL_REFUSED,
} from '../protocol/backend.js';
import { Backend, Frontend, Limits, frontendMaxLength, type TxStatusByte } from '../protocol/codes.js';
import { FrameLengthError, FrameReader, FrameScanner, FrameTypeError, type ScanHandler } from '../protocol/frame-reader.js';
import { decodeFirstMessage, ProtocolFormatError } from '../protocol/frontend.js';
import { readErrorField, decodeParameterStatus } from '../protocol/backend.js';
import { mockVerifier, ScramServerExchange, typicalIterations } from '../auth/scram.js';
import { resolveStartup, tenantFromSni, type ResolvedStartup } from '../routing/resolve.js';
import { sendUpstreamCancel, UpstreamRefused, type UpstreamLogin } from '../pool/upstream.js';
import { poolKey, type Backend as PooledBackend, type TenantPool } from '../pool/backend-pool.js';
import { hasSessionState } from './session-state.js';
import { ReplyQueue, StatementTracker, type Expectation } from './tx-statements.js';
import type { Frame } from '../protocol/frame-reader.js';
import type { Lease } from '../limits/connections.js';
import { LimitKeys, sourceKey, type LockoutRule, type SlotRequest } from '../limits/store.js';
import type { ByteRate } from '../limits/bandwidth.js';
import { hashCancelSecret } from '../cluster/bus.js';
import { PrefixedStream } from '../net/prefixed-stream.js';
import type { SessionContext } from './context.js';
import type { Metrics, TrafficSource } from '../observability/metrics.js';
import type { AuditEvent } from '../audit/record.js';
import { jtiKey, type StaffClaims } from '../auth/jwt.js';
import { StatementAudit } from './statement-audit.js';

/** A staff session's token, as verified (auth/jwt.ts); no token bytes are kept. */
export interface StaffIdentity {
  readonly sub: string;
  readonly jti: string;
  readonly ticket: string;
  readonly access: 'read' | 'write';
  /** exp, in ms since the epoch: the session ends then (S9). */
  readonly expMs: number;
}

/** One row of the admin API's session list. */
export interface SessionView {
  readonly id: string;
  readonly tenant: string | null;
  readonly user: string | null;
  readonly database: string | null;
  readonly staff: { sub: string; ticket: string; access: string; jti: string; expires_at: string } | null;
  readonly client: { addr: string; port: number };
  readonly tls: string | null;
  readonly started_at: string;
  readonly phase: string;
  readonly tx_status: string;
  readonly bytes_in: number;
  readonly bytes_out: number;
  readonly queries: number;
}

/**
 * Mock verifiers' iteration counts by tenant (or, for unknown tenants, by config). Configs are
 * replaced whole on reload, so a weak map keyed by them never serves a stale count.
 */
const MOCK_ITERATIONS = new WeakMap<Config | TenantConfig, number>();

export type Phase = 'negotiating' | 'tls_handshake' | 'admitting' | 'authenticating' | 'connecting' | 'relaying' | 'closed';

/** Why a session ended (audit `session.end.reason`, metric label). */
export type CloseReason =
  | 'client_terminate'
  | 'client_eof'
  | 'backend_terminated'
  | 'backend_lost'
  | 'drain_deadline'
  | 'protocol_violation'
  | 'admin'
  | 'internal'
  | 'pool_timeout'
  | 'send_timeout'
  | 'idle_timeout'
  | 'idle_in_txn_timeout'
  | 'transaction_timeout'
  | 'tenant_suspended'
  | 'auth_expired'
  | 'staff_revoked'
  | 'audit_unavailable'
  | 'limit';

type AuthStage = 'negotiation' | 'startup' | 'sasl_first' | 'sasl_final' | 'password' | 'backend_connect';

/** After a FATAL is written, how long the peer gets to read it before the socket is destroyed. */
const CLOSE_GRACE_MS = 5_000;

const BACKEND_TYPES = new Set<number>(Object.values(Backend));
/** First byte of a TLS record carrying a handshake (ClientHello). */
const TLS_HANDSHAKE = 0x16;

export class ClientSession implements TrafficSource {
  readonly id = randomUUID();
  readonly startedAt = Date.now();
  phase: Phase = 'negotiating';

  private sock: Socket;
  private readonly reader = new FrameReader();
  private readonly remoteAddress: string;
  private readonly remotePort: number;
  private deadline: NodeJS.Timeout | null;
  private preauthLease: Lease | null;
  private tenantLease: Lease | null = null;

  // Negotiation facts, for routing and the audit record.
  private tlsNegotiation: 'sslrequest' | 'direct' | 'none' = 'none';
  private tlsVersion: string | null = null;
  private tlsCipher: string | null = null;
  private sni: string | undefined = undefined;
  private sslRequested = false;
  private gssRequested = false;

  // Authentication.
  private startup: ResolvedStartup | null = null;
  private tenant: TenantConfig | undefined = undefined;
  private user: UserConfig | undefined = undefined;
  private scram: ScramServerExchange | null = null;
  private saslStage: 'initial' | 'continue' = 'initial';
  private pendingNegotiate: Buffer | null = null;
  /** The user name is [staff] login_user: a JWT in a cleartext password exchange instead of SCRAM. */
  private staffLogin = false;
  private staffIdentity: StaffIdentity | null = null;
  private staffClaims: StaffClaims | null = null;

  // Statement audit (staff sessions, tenants with audit_statements = "all").
  private auditor: StatementAudit | null = null;
  /** Each statement's record is durable before the statement is forwarded (staff, audit_fail_closed). */
  private auditFailClosed = false;
  private auditReader: FrameReader | null = null;
  /** A durable write is in flight: client bytes wait behind it, in order. */
  private auditWaiting = false;
  private auditQueue: Buffer[] = [];

  // Relay.
  /** The backend serving this client now; null between transactions in transaction mode. */
  private backend: PooledBackend | null = null;
  private pool: TenantPool | null = null;
  private poolKeyStr = '';
  private login: UpstreamLogin | null = null;
  private transactionMode = false;
  /** Transaction mode: the client changed session state, so it keeps its backend to the end. */
  private pinned = false;
  /** Transaction mode works on whole frames both ways (statement names are rewritten). */
  private readonly txClientReader = new FrameReader();
  private readonly txBackendReader = new FrameReader();
  private readonly statements = new StatementTracker();
  private readonly replies = new ReplyQueue();
  /** Client frames waiting for a backend (transaction mode); the client is paused meanwhile. */
  private pending: Frame[] = [];
  private acquiring = false;
  /** Messages that will each be answered by ReadyForQuery (Query, Sync, FunctionCall)… */
  private rfqExpected = 0;
  /** …and the ReadyForQuery messages seen: equal when the backend owes the client nothing. */
  private rfqReceived = 0;
  /** Extended-protocol messages since the last Sync: a backend is not given back in between. */
  private unsynced = 0;
  private loginBackendPid = 0;
  /** Set by noteClientFrame when a statement would leave session state (transaction mode decides). */
  private sessionStateSeen = false;
  /** Transaction mode: the parameters shown at login, from the pool (no backend is held). */
  private loginParameters: Map<string, string> | null = null;
  transactions = 0;
  private foldedTransactions = 0;
  private foldedQueries = 0;
  private cancelKey: { processId: number; secretKey: Buffer } | null = null;
  private clientScanner: FrameScanner | null = null;
  private upstreamScanner: FrameScanner | null = null;
  private terminateSeen = false;
  private txStatus: number = 0x49;
  private lastUpstreamError: { code: string; fatal: boolean } | null = null;
  private started = false;
  private auditEi = 0;
  private maxMessageBytes: number = Limits.largeMessageBytes;
  private tenantActiveAfter = 0;
  /** The staff reserve this session is counted under (read once, at connect); 0: the tenant's own slots. */
  private staffSlots = 0;
  /** The source address as limits key it (IPv6 by /64). */
  private readonly source: string;

  // Timeouts (checked by the proxy's sweeper, see checkTimers): performance.now() readings.
  private lastClientAt = 0;
  /** When the backend began owing replies (0: it owes nothing). */
  private busySince = 0;
  /** Since when output has waited for a client that takes none of it (0: it is reading). */
  private sendStalledSince = 0;
  private lastPendingOut = 0;
  /** When the session last became idle (nothing owed). */
  private idleSince = 0;
  /** When the open transaction began (0: none). */
  private txSince = 0;
  private queryCancelSent = false;
  /** Limits that fired during the session (audit `session.end`). */
  private limitEvents: string[] = [];

  // Bandwidth: the tenant's budgets, and whether this session waits on one.
  private upRate: ByteRate | null = null;
  private downRate: ByteRate | null = null;
  private clientThrottled = false;
  private backendThrottled = false;

  // Counters (folded into metrics at scrape time and at the end).
  bytesIn = 0;
  bytesOut = 0;
  messagesIn = 0;
  messagesOut = 0;
  queries = 0;
  private foldedBytesIn = 0;
  private foldedBytesOut = 0;
  private foldedMessagesIn = 0;
  private foldedMessagesOut = 0;

  constructor(
    socket: Socket,
    private readonly ctx: SessionContext,
    preauthLease: Lease,
  ) {
    this.sock = socket;
    this.preauthLease = preauthLease;
    this.remoteAddress = socket.remoteAddress ?? '';
    this.remotePort = socket.remotePort ?? 0;
    this.source = sourceKey(this.remoteAddress);
    socket.setNoDelay(true);
    socket.on('data', this.onClientData);
    socket.on('error', this.onClientError);
    socket.on('close', this.onClientClose);
    socket.on('drain', this.onClientDrain);
    this.deadline = setTimeout(this.onDeadline, ctx.config.server.authTimeoutMs);
    ctx.metrics.preauthConnections.inc();
  }

  private get config(): Config {
    return this.ctx.config;
  }

  get tenantId(): string | undefined {
    return this.tenant?.id;
  }

  get userName(): string | undefined {
    return this.startup?.user;
  }

  /** The staff token behind this session (null for a tenant user's session). */
  get staff(): StaffIdentity | null {
    return this.staffIdentity;
  }

  /** What the admin API lists: no secrets, user-supplied names sanitized. */
  describe(): SessionView {
    return {
      id: this.id,
      tenant: this.tenant?.id ?? null,
      user: this.startup === null ? null : sanitizeName(this.startup.user),
      database: this.startup === null ? null : sanitizeName(this.startup.database ?? this.tenant?.backendDatabase ?? ''),
      staff: this.staffIdentity === null ? null : { sub: this.staffIdentity.sub, ticket: this.staffIdentity.ticket, access: this.staffIdentity.access, jti: this.staffIdentity.jti, expires_at: new Date(this.staffIdentity.expMs).toISOString() },
      client: { addr: this.remoteAddress, port: this.remotePort },
      tls: this.tlsVersion,
      started_at: new Date(this.startedAt).toISOString(),
      phase: this.phase,
      tx_status: String.fromCharCode(this.txStatus),
      bytes_in: this.bytesIn,
      bytes_out: this.bytesOut,
      queries: this.queries,
    };
  }

  // ---------------------------------------------------------------- client input

  private readonly onClientData = (chunk: Buffer): void => {
    try {
      if (this.phase === 'relaying') {
        this.relayClientChunk(chunk);
        return;
      }
      if (this.phase === 'closed') return; // reading on only to see the peer's FIN
      if (this.phase === 'negotiating' && this.bytesIn === 0 && chunk[0] === TLS_HANDSHAKE && this.ctx.tls !== null) {
        // Direct TLS: a ClientHello instead of a startup packet (PostgreSQL 17).
        this.bytesIn += chunk.length;
        this.startTls(chunk);
        return;
      }
      this.bytesIn += chunk.length;
      this.reader.push(chunk);
      this.pump();
    } catch (err) {
      this.fail(err);
    }
  };

  /** Processes whole frames while the phase can use them (pre-relay phases only). */
  private pump(): void {
    while (this.phase !== 'closed') {
      if (this.phase === 'negotiating') {
        let frame;
        try {
          frame = this.reader.nextUntyped(Limits.startupBytes);
        } catch (err) {
          if (err instanceof FrameLengthError) return this.reject('protocol_violation:startup_length');
          throw err;
        }
        if (frame === null) return;
        this.onFirstMessage(frame.body);
      } else if (this.phase === 'authenticating') {
        let frame;
        const passwordBytes = this.staffLogin ? Limits.passwordBytes : Limits.saslBytes;
        try {
          // Only 'p': any other type, Terminate included, is "expected SASL/password response" (A1, A2), as in PostgreSQL.
          frame = this.reader.nextTyped((type) => (type === Frontend.Password ? passwordBytes : -1));
        } catch (err) {
          if (err instanceof FrameTypeError) throw this.staffLogin ? Errors.expectedPasswordResponse(err.type) : Errors.expectedSaslResponse(err.type);
          if (err instanceof FrameLengthError) throw Errors.invalidLength('protocol_violation:auth_length');
          throw err;
        }
        if (frame === null) return;
        if (this.staffLogin) this.onStaffPassword(frame.body);
        else this.onSaslMessage(frame.body);
      } else {
        // tls_handshake, connecting: bytes wait in the reader until the phase changes.
        return;
      }
    }
  }

  private onFirstMessage(body: Buffer): void {
    let msg;
    try {
      msg = decodeFirstMessage(body);
    } catch (err) {
      if (!(err instanceof ProtocolFormatError)) throw err;
      // A malformed CancelRequest is closed silently, as PostgreSQL does; a broken startup packet gets N5.
      if (err.code === 'cancel_length') return this.reject('protocol_violation:cancel_length');
      throw Errors.startupLayout();
    }
    switch (msg.kind) {
      case 'ssl_request':
        if (this.sslRequested || this.tlsNegotiation !== 'none') {
          // PostgreSQL treats a second SSLRequest as an unknown protocol version 1234.5679.
          throw Errors.unsupportedProtocol(1234, 5679);
        }
        this.sslRequested = true;
        // Answer first (never with an ErrorResponse: CVE-2024-10977), then the buffer must be
        // empty: bytes sent before the handshake were not encrypted (CVE-2021-23214).
        this.sock.write(this.ctx.tls === null ? SSL_REFUSED : SSL_ACCEPTED);
        if (this.reader.buffered > 0) throw Errors.dataAfterSslRequest();
        if (this.ctx.tls !== null) this.startTls();
        return;
      case 'gssenc_request':
        if (this.gssRequested || this.tlsNegotiation !== 'none') throw Errors.unsupportedProtocol(1234, 5680);
        this.gssRequested = true;
        this.sock.write(SSL_REFUSED); // 'N': no GSSAPI encryption
        if (this.reader.buffered > 0) throw Errors.dataAfterGssRequest();
        return;
      case 'cancel': {
        const target = this.ctx.cancels.lookup(msg.processId, msg.secretKey);
        // Not ours: the key may belong to another instance (or worker); the bus reaches its owner.
        if (target !== undefined) target.cancel();
        else this.ctx.bus.publishCancel({ processId: msg.processId, secretHash: hashCancelSecret(msg.secretKey, this.ctx.mockSecret) });
        // No reply whatever the outcome, as PostgreSQL (R5).
        this.closeQuietly();
        return;
      }
      case 'unsupported_version':
        throw Errors.unsupportedProtocol(msg.major, msg.minor);
      case 'startup':
        if (msg.minor > 0 || msg.unknownProtocolOptions.length > 0) {
          this.pendingNegotiate = encodeNegotiateProtocolVersion(msg.unknownProtocolOptions);
        }
        this.onStartup(msg.params);
        return;
    }
  }

  /** Upgrades the connection: after SSLRequest (no prefix) or for direct TLS (the ClientHello already read). */
  private startTls(directPrefix?: Buffer): void {
    const tlsCtx = this.ctx.tls!;
    this.phase = 'tls_handshake';
    const raw = this.sock;
    raw.removeListener('data', this.onClientData);
    raw.removeListener('error', this.onClientError);
    raw.removeListener('close', this.onClientClose);
    raw.removeListener('drain', this.onClientDrain);
    const direct = directPrefix !== undefined;
    const secure = new tls.TLSSocket(direct ? new PrefixedStream(raw, directPrefix) : raw, {
      isServer: true,
      secureContext: tlsCtx.secureContext,
      ALPNProtocols: ['postgresql'],
      SNICallback: (servername, cb) => {
        this.sni = servername;
        // A tenant whose connection-rate bucket is known to be empty: refuse before the costly
        // part of the handshake (key exchange, signature). The client sees a TLS alert, not
        // 53300: during a storm that is the price of not spending a handshake on every attempt.
        const tenant = tenantFromSni(servername, this.config.server.sniSuffix);
        if (tenant !== undefined && this.ctx.rateShielded(tenant)) {
          this.ctx.metrics.limitRejections.inc({ tenant: this.config.tenants.has(tenant) ? tenant : 'unknown', limit: 'new_connections_per_second' });
          this.ctx.rejections.record('rate_limited_handshake', this.remoteAddress, tenant);
          cb(new Error('connection rate exceeded'));
          return;
        }
        cb(null, tlsCtx.secureContext);
      },
    });
    this.sock = secure;
    secure.on('data', this.onClientData);
    secure.on('error', this.onClientError);
    secure.on('close', this.onClientClose);
    secure.on('drain', this.onClientDrain);
    secure.once('secure', () => {
      try {
        this.tlsNegotiation = direct ? 'direct' : 'sslrequest';
        this.tlsVersion = secure.getProtocol();
        // @types/node says getCipher() is never null, but Node returns null once the handle is gone.
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
        this.tlsCipher = secure.getCipher()?.name ?? null;
        // ALPN (PostgreSQL 17): direct TLS requires "postgresql"; after SSLRequest it is optional,
        // but a client that offers protocols must include it (N10).
        const alpn = secure.alpnProtocol;
        this.ctx.metrics.tlsHandshakes.inc({ outcome: 'ok', version: this.tlsVersion ?? 'unknown' });
        if (alpn !== 'postgresql' && (direct || alpn !== false)) return this.reject('protocol_violation:alpn');
        this.phase = 'negotiating';
        this.pump();
      } catch (err) {
        this.fail(err);
      }
    });
  }

  private onStartup(params: Map<string, string>): void {
    if (this.ctx.isDraining()) throw Errors.shuttingDown();
    const startup = resolveStartup(params, this.sni, this.config.server.sniSuffix);
    this.startup = startup;
    // T1: before any authentication request (cancel requests were handled above).
    if (this.config.server.requireTls && this.tlsNegotiation === 'none') throw Errors.tlsRequired();
    const tenant = this.config.tenants.get(startup.tenantId);
    // Staff: a JWT as the password, which only TLS may carry (before any authentication request).
    this.staffLogin = this.config.staff !== undefined && startup.user === this.config.staff.loginUser;
    if (this.staffLogin && this.tlsNegotiation === 'none') throw Errors.tlsRequired();
    let failReason: string | null = null;
    if (tenant === undefined) failReason = 'unknown_tenant';
    else if (!tenant.enabled) failReason = 'tenant_disabled';
    else if (this.ctx.isSuspended(tenant.id)) failReason = 'tenant_suspended';
    else if (!isAllowedSource(tenant, this.remoteAddress)) failReason = 'source_not_allowed';
    const user = this.staffLogin ? undefined : tenant?.users.get(startup.user);
    if (failReason === null && user === undefined && !this.staffLogin) failReason = 'unknown_user';
    this.tenant = tenant;
    this.user = failReason === null ? user : undefined;
    // Admission (auth cool-down, connection rate) before any SCRAM work, and the same answer
    // for every user name, so it reveals nothing about accounts. One limit-store round trip.
    this.phase = 'admitting';
    const rate =
      failReason === null && tenant!.limits.newConnectionsPerSecond > 0
        ? { key: LimitKeys.tenantRate(tenant!.id), ratePerSecond: tenant!.limits.newConnectionsPerSecond, burst: tenant!.limits.newConnectionsBurst }
        : null;
    this.ctx.limits.admit(rate, this.lockoutRules()).then(
      (verdict) => {
        if (this.phase !== 'admitting') return;
        try {
          if (verdict !== 'ok') return this.refuseAdmission(verdict === 'rate_limited' ? 'rate_limited' : 'auth_throttled');
          if (this.staffLogin) this.beginStaffPassword(failReason);
          else this.beginSasl(failReason);
        } catch (err) {
          this.fail(err);
        }
      },
      (err: unknown) => this.fail(err),
    );
  }

  /**
   * A connection-rate or cool-down refusal. A storm is many of these, so they are aggregated
   * (one connection.rejected record per reason, source prefix and tenant each window), as
   * pre-auth noise is: the audit log must not become the attack's amplifier.
   */
  private refuseAdmission(reason: 'rate_limited' | 'auth_throttled'): void {
    const tenant = this.tenant?.id;
    this.ctx.metrics.limitRejections.inc({ tenant: tenant ?? 'unknown', limit: reason === 'rate_limited' ? 'new_connections_per_second' : 'auth_failures' });
    this.ctx.metrics.errors.inc({ kind: 'limit' });
    this.ctx.rejections.record(reason, this.remoteAddress, tenant);
    if (reason === 'rate_limited' && tenant !== undefined) this.ctx.noteRateLimited(tenant);
    this.sendFatal(Errors.tooManyAttempts(reason));
    this.phase = 'closed';
    this.cleanup();
  }

  /** Authentication-failure cool-downs that apply to this attempt: per (tenant, source) and per source. */
  private lockoutRules(): LockoutRule[] {
    const rules: LockoutRule[] = [];
    const t = this.tenant;
    if (t !== undefined && t.limits.authFailureLimit > 0) {
      rules.push({ key: LimitKeys.tenantSourceAuth(t.id, this.source), maxFailures: t.limits.authFailureLimit, windowMs: t.limits.authFailureWindowMs, cooldownMs: t.limits.authFailureCooldownMs });
    }
    const g = this.config.limits;
    if (g.authFailuresPerSource > 0) {
      rules.push({ key: LimitKeys.sourceAuth(this.source), maxFailures: g.authFailuresPerSource, windowMs: g.authFailureWindowMs, cooldownMs: g.authFailureCooldownMs });
    }
    return rules;
  }

  /** The iteration count a mock verifier shows: computed once per tenant (or config) and kept, never per login. */
  private mockIterations(): number {
    const key: Config | TenantConfig = this.tenant ?? this.config;
    let n = MOCK_ITERATIONS.get(key);
    if (n === undefined) {
      const tenants = this.tenant === undefined ? [...this.config.tenants.values()] : [this.tenant];
      n = typicalIterations(tenants.flatMap((t) => [...t.users.values()].map((u) => u.verifier)));
      MOCK_ITERATIONS.set(key, n);
    }
    return n;
  }

  private beginSasl(failReason: string | null): void {
    const startup = this.startup!;
    const user = this.tenant?.users.get(startup.user);
    // Unknown tenant or user: a full exchange against a deterministic mock verifier (rule 3), with
    // the iteration count real users of that tenant show (of all tenants, for an unknown one), so
    // `i=` in the server-first-message gives nothing away either.
    const verifier = failReason === null ? user!.verifier : mockVerifier(this.ctx.mockSecret, startup.tenantId, startup.user, this.mockIterations());
    const binding = this.tlsNegotiation === 'none' ? null : (this.ctx.tls?.endpointBinding ?? null);
    this.scram = new ScramServerExchange(verifier, failReason, startup.user, binding);
    this.phase = 'authenticating';
    this.sock.cork();
    if (this.pendingNegotiate !== null) this.sock.write(this.pendingNegotiate);
    this.sock.write(encodeAuthenticationSASL(ScramServerExchange.mechanisms(binding !== null)));
    this.sock.uncork();
    this.pump(); // a client may have pipelined its SASLInitialResponse
  }

  private onSaslMessage(body: Buffer): void {
    const scram = this.scram!;
    if (this.saslStage === 'initial') {
      const serverFirst = scram.initialMessage(body);
      // Length -1 (no initial response) gets an empty SASLContinue; the next SASLResponse carries the client-first-message.
      if (!scram.awaitingClientFirst) this.saslStage = 'continue';
      this.sock.write(encodeAuthenticationSASLContinue(serverFirst));
      return;
    }
    const result = scram.clientFinal(body);
    if (!result.ok) return this.authFailed(result.error, 'sasl_final');
    this.phase = 'connecting';
    this.sock.pause();
    void this.connect(result.serverFinal, result.clientKey);
  }

  // ---------------------------------------------------------------- staff login (JWT)

  private staffFailReason: string | null = null;

  /** Asks for the token (AuthenticationCleartextPassword); the exchange is the same for every tenant and user. */
  private beginStaffPassword(failReason: string | null): void {
    // Without a working audit log no staff session may start (S10): nothing would record it.
    if (!this.ctx.audit.healthy) throw Errors.auditUnavailable();
    this.staffFailReason = failReason;
    this.phase = 'authenticating';
    this.sock.cork();
    if (this.pendingNegotiate !== null) this.sock.write(this.pendingNegotiate);
    this.sock.write(AUTHENTICATION_CLEARTEXT_PASSWORD);
    this.sock.uncork();
    this.pump();
  }

  /** PasswordMessage: one NUL-terminated string, the JWT. */
  private onStaffPassword(body: Buffer): void {
    if (body.length === 0 || body.indexOf(0) !== body.length - 1) throw Errors.invalidFormat();
    const token = body.toString('utf8', 0, body.length - 1);
    this.phase = 'connecting';
    this.sock.pause();
    void this.decideStaff(token);
  }

  /**
   * Verifies the token, checks revocation and single use, and makes the decision durable as
   * `staff.access` before any backend connection (SECURITY.md §2.5). A refusal is the same 28P01
   * as any failed login; the reason goes to the audit only.
   */
  private async decideStaff(token: string): Promise<void> {
    const startup = this.startup!;
    const staffCfg = this.config.staff!;
    try {
      const decision = await this.ctx.staffVerifier!.decide(token, startup.tenantId, this.tenant?.staffAccess ?? 'deny');
      if (!this.stillConnecting()) return;
      let reason = this.staffFailReason ?? (decision.ok ? null : decision.reason);
      if (reason === null && decision.ok) {
        const c = decision.claims;
        if (this.ctx.isStaffRevoked(c.jti, c.sub)) reason = 'jwt_invalid:revoked';
        else if (!staffCfg.allowTokenReuse) {
          const ttlMs = c.exp * 1000 - Date.now() + staffCfg.clockToleranceMs;
          const first = await this.ctx.limits.claimOnce(LimitKeys.staffToken(jtiKey(c.iss, c.jti)), Math.max(1000, ttlMs));
          if (!this.stillConnecting()) return;
          if (!first) reason = 'jwt_invalid:replay';
        }
      }
      const tenant = this.tenant;
      const granted = decision.ok && reason === null ? decision.access : null;
      const event: AuditEvent = {
        event: 'staff.access',
        session: { id: this.id, ei: this.auditEi++ },
        ...(tenant === undefined ? {} : { tenant: tenant.id }),
        client: this.clientBlock(),
        staff: decision.ok ? decision.claims : { unverified: true, ...decision.claimed },
        target: {
          tenant: sanitizeName(startup.tenantId),
          db_user: tenant?.staffBackendUser ?? null,
          database: sanitizeName(startup.database ?? tenant?.backendDatabase ?? ''),
          access_level: granted ?? (decision.ok ? decision.claims.requested_access : null),
          tenant_cap: tenant?.staffAccess ?? null,
        },
        decision: granted === null ? 'deny' : 'allow',
        ...(reason === null ? {} : { reason }),
        outcome: { success: granted !== null, ...(reason === null ? {} : { reason }) },
      };
      try {
        await this.ctx.audit.appendDurable(event);
      } catch (err) {
        if (!this.stillConnecting()) return;
        this.ctx.log.error({ session: this.id, err }, 'staff access decision could not be audited');
        this.ctx.metrics.errors.inc({ kind: 'internal' });
        this.sendFatal(Errors.auditUnavailable());
        this.phase = 'closed';
        this.cleanup();
        return;
      }
      if (!this.stillConnecting()) return;
      if (granted === null || !decision.ok) {
        this.authFailed(Errors.authFailed(startup.user, reason ?? 'jwt_invalid:scope'), 'password');
        return;
      }
      const c = decision.claims;
      this.staffClaims = c;
      this.staffIdentity = { sub: c.sub, jti: c.jti, ticket: c.reason_or_ticket, access: granted, expMs: c.exp * 1000 };
      await this.connect(null, null);
    } catch (err) {
      if (this.phase === 'connecting') this.fail(err);
    }
  }

  // ---------------------------------------------------------------- upstream login

  /** Staff logins pass null, null: no SCRAM to finish, and the tenant's staff role logs in upstream. */
  private async connect(serverFinal: Buffer | null, clientKey: Buffer | null): Promise<void> {
    const tenant = this.tenant!;
    const user = this.user;
    const startup = this.startup!;
    const staff = this.staffIdentity;
    try {
      // Checked after authentication, as PostgreSQL checks a database's existence.
      const database = startup.database ?? tenant.backendDatabase;
      if (tenant.databases !== undefined && !tenant.databases.has(database)) throw Errors.undefinedDatabase(database);
      // A fail-closed tenant's sessions are audited statement by statement: no audit, no session (S10).
      if (tenant.auditFailClosed && !this.ctx.audit.healthy) throw Errors.auditUnavailable();
      this.staffSlots = staff === null ? 0 : (this.config.staff?.reservedConnections ?? 0);
      const got = await this.ctx.limits.acquire(this.connectionSlots());
      if (!this.stillConnecting()) {
        if (got.ok) got.lease.release();
        return;
      }
      if (!got.ok) {
        if (this.staffSlots > 0) {
          this.ctx.metrics.limitRejections.inc({ tenant: tenant.id, limit: 'staff_reserved_connections' });
          throw Errors.tooManyConnectionsForRole(startup.user);
        }
        const byUser = got.refused === 1;
        this.ctx.metrics.limitRejections.inc({ tenant: tenant.id, limit: byUser ? 'max_connections_per_user' : 'max_client_connections' });
        throw byUser ? Errors.tooManyConnectionsForRole(startup.user) : Errors.tooManyConnectionsForDatabase(database);
      }
      this.tenantLease = got.lease;
      this.tenantActiveAfter = got.active[0] ?? 0;
      if (staff !== null) {
        // The tenant's staff role; read access also makes every transaction read-only (25006 on
        // a write). A startup parameter is applied after `options`, so a client cannot undo it there.
        const params = new Map(startup.forward);
        if (staff.access === 'read') params.set('default_transaction_read_only', 'on');
        this.login = { user: tenant.staffBackendUser!, database, params, credential: { kind: 'password', password: process.env[tenant.staffBackendPasswordEnv!] ?? '' } };
      } else {
        const password = user!.backendPasswordEnv === undefined ? undefined : process.env[user!.backendPasswordEnv];
        this.login = {
          user: user!.backendUser,
          database,
          params: startup.forward,
          credential: password !== undefined ? { kind: 'password', password } : { kind: 'client_key', clientKey: clientKey!, verifier: user!.verifier },
        };
      }
      this.poolKeyStr = poolKey(this.login);
      this.pool = this.ctx.pools.get(tenant.id, tenant.pool);
      // Staff sessions keep one backend (session semantics): their audit and read-only guard see one server session.
      this.transactionMode = staff === null && tenant.pool.mode === 'transaction';
      // The first login of a pool key takes a backend: it proves the credentials work upstream and
      // gives the parameters clients are shown. After that, a transaction-mode client needs none
      // until its first transaction (a session-mode client keeps one for the whole session).
      const target = this.ctx.upstreamTarget(tenant);
      let backend: PooledBackend | null = null;
      if (this.transactionMode) this.loginParameters = await this.pool.loginParameters(this.poolKeyStr, this.login, target);
      else backend = await this.pool.acquire(this.poolKeyStr, this.login, target, this.staffSlots);
      if (!this.stillConnecting()) {
        if (backend !== null) this.pool.release(backend, true, false); // the client left while we waited; the backend is clean
        return;
      }
      this.beginRelay(backend, serverFinal);
    } catch (err) {
      if (this.phase !== 'connecting') return;
      if (err instanceof UpstreamRefused) {
        this.auditAuthFailure('backend_connect', `backend_refused:${err.sqlstate}`, err.sqlstate, '(backend error)');
        this.ctx.metrics.sessions.inc({ tenant: tenant.id, outcome: 'upstream_failed' });
        this.endWith(err.frame);
        this.finish('backend_terminated');
        return;
      }
      if (err instanceof PgError) {
        if (err.kind === 'upstream') {
          this.ctx.log.warn({ session: this.id, tenant: tenant.id, reason: err.reason, err: err.cause }, 'backend connect failed');
          this.ctx.metrics.sessions.inc({ tenant: tenant.id, outcome: 'upstream_failed' });
        }
        this.auditAuthFailure('backend_connect', err.reason, err.sqlstate, err.message);
        this.sendFatal(err);
        this.finish(err.kind === 'limit' ? 'admin' : 'backend_lost');
        return;
      }
      this.fail(err);
    }
  }

  /**
   * The connection slots this session holds: the tenant's and its user's, or for staff (with a
   * reserve) the tenant's staff slots only, so staff can get in while the tenant is at its cap.
   */
  private connectionSlots(): SlotRequest[] {
    const tenant = this.tenant!;
    if (this.staffSlots > 0) return [{ key: LimitKeys.staffConnections(tenant.id), limit: this.staffSlots }];
    const slots: SlotRequest[] = [{ key: LimitKeys.tenantConnections(tenant.id), limit: tenant.maxClientConnections }];
    const user = this.user;
    const perUser = user === undefined ? 0 : user.maxConnections > 0 ? user.maxConnections : tenant.limits.maxConnectionsPerUser;
    if (perUser > 0) slots.push({ key: LimitKeys.userConnections(tenant.id, user!.name), limit: perUser });
    return slots;
  }

  /** After an await in connect(): false when the client left (or the session ended) meanwhile. */
  private stillConnecting(): boolean {
    return this.phase === 'connecting';
  }

  private beginRelay(backend: PooledBackend | null, serverFinal: Buffer | null): void {
    const tenant = this.tenant!;
    this.loginBackendPid = backend?.processId ?? 0;
    this.maxMessageBytes = tenant.limits.maxMessageBytes;
    const bw = this.ctx.bandwidth.get(tenant.id, tenant.limits.maxBandwidthBytesPerSecond);
    this.upRate = bw?.clientToServer ?? null;
    this.downRate = bw?.serverToClient ?? null;
    this.lastClientAt = this.idleSince = performance.now();
    this.cancelKey = this.ctx.cancels.issue({ tenantId: tenant.id, cancel: () => this.cancelRunning() });
    this.txStatus = backend?.conn.txStatus ?? TX_IDLE;
    const parameters = this.loginParameters ?? this.pool!.parametersFor(this.poolKeyStr) ?? backend?.conn.parameters ?? new Map<string, string>();

    // Everything the client needs to start, in one write.
    this.sock.cork();
    if (serverFinal !== null) this.sock.write(encodeAuthenticationSASLFinal(serverFinal));
    this.sock.write(AUTHENTICATION_OK);
    for (const [name, value] of parameters) this.sock.write(encodeParameterStatus(name, value));
    this.sock.write(encodeBackendKeyData(this.cancelKey.processId, this.cancelKey.secretKey));
    this.sock.write(encodeReadyForQuery(this.txStatus as TxStatusByte));
    this.sock.uncork();

    this.clearDeadline();
    this.preauthLease?.release();
    this.preauthLease = null;
    this.ctx.metrics.preauthConnections.dec();
    this.ctx.metrics.clientConnections.inc({ tenant: tenant.id });
    this.ctx.metrics.sessions.inc({ tenant: tenant.id, outcome: 'started' });
    this.ctx.metrics.liveSessions.add(this);
    this.started = true;
    this.phase = 'relaying';
    if (this.staffIdentity !== null || tenant.auditStatements === 'all') {
      const staff = this.staffIdentity !== null;
      this.auditor = new StatementAudit(
        { params: staff ? this.config.staff!.auditParameters : tenant.auditParameters, queryMaxBytes: this.config.audit.queryMaxBytes, paramMaxBytes: this.config.audit.paramMaxBytes },
        () => this.auditEi++,
      );
      this.auditFailClosed = staff || tenant.auditFailClosed;
      this.auditReader = new FrameReader();
    }
    this.auditSessionStart(backend);
    this.ctx.log.info({ session: this.id, tenant: tenant.id, user: sanitizeName(this.startup!.user), client: this.remoteAddress, tls: this.tlsVersion }, 'session started');

    this.clientScanner = new FrameScanner(this.clientHandler);
    this.upstreamScanner = new FrameScanner(this.upstreamHandler);
    if (backend !== null) this.attach(backend);
    // Bytes the client pipelined behind its SASL response go first.
    // A bad frame among them ends the session here: the caller's catch is for the connect phase
    // and would drop the error, leaving the session open with its socket paused (found by the
    // fuzzer: a valid client-final-message with junk behind it).
    const early = this.reader.drain();
    if (early.length > 0) {
      try {
        this.relayClientChunk(early, false);
      } catch (err) {
        this.fail(err);
        return;
      }
    }
    this.sock.resume();
  }

  private attach(backend: PooledBackend): void {
    this.backend = backend;
    const up = backend.socket;
    up.on('data', this.onUpstreamData);
    up.on('close', this.onUpstreamClose);
    up.on('drain', this.onUpstreamDrain);
    if (!this.backendThrottled) up.resume();
  }

  /** Takes the backend off this session; it goes back to the pool (reset first when asked) or is closed. */
  private detach(reusable: boolean, reset: boolean): void {
    const b = this.backend;
    if (b === null) return;
    this.backend = null;
    const up = b.socket;
    up.removeListener('data', this.onUpstreamData);
    up.removeListener('close', this.onUpstreamClose);
    up.removeListener('drain', this.onUpstreamDrain);
    this.pool!.release(b, reusable, reset);
  }

  /** Whether the backend owes nothing and holds no half-sent message: safe for another client. */
  private backendIsClean(): boolean {
    return (
      this.txStatus === TX_IDLE &&
      this.rfqReceived === this.rfqExpected &&
      this.unsynced === 0 &&
      (this.transactionMode ? this.txBackendReader.buffered === 0 : this.clientScanner?.atBoundary === true && this.upstreamScanner?.atBoundary === true) &&
      this.lastUpstreamError?.fatal !== true
    );
  }

  /** Whether the bytes sent to the client end on a message boundary (transaction mode sends whole frames). */
  private clientStreamAtBoundary(): boolean {
    return this.transactionMode || this.upstreamScanner?.atBoundary === true;
  }

  /** The client is leaving (or being sent away): its backend goes back clean and reset, or is closed. */
  private releaseBackend(): void {
    this.pending = [];
    this.detach(this.backendIsClean(), !this.transactionMode || this.pinned);
  }

  /** CancelRequest for this session: reaches the backend running its query, if any; a late one is dropped. */
  private cancelRunning(): void {
    const b = this.backend;
    if (b === null) return; // nothing running: as PostgreSQL with a key whose query is done
    b.cancelStarted();
    sendUpstreamCancel(this.ctx.upstreamTarget(this.tenant!), b.processId, b.conn.secretKey, this.config.server.backendConnectTimeoutMs, () => b.cancelFinished());
  }

  /** Transaction mode: a backend for the client's next transaction; its chunks wait in `pending`. */
  private acquireForTransaction(): void {
    if (this.acquiring) return;
    this.acquiring = true;
    this.sock.pause();
    this.pool!.acquire(this.poolKeyStr, this.login!, this.ctx.upstreamTarget(this.tenant!)).then(
      (b) => {
        this.acquiring = false;
        if (this.phase !== 'relaying') {
          this.pool!.release(b, true, false);
          return;
        }
        try {
          this.attach(b);
          this.flushClientFrames();
          if (!this.clientThrottled) this.sock.resume();
        } catch (err) {
          this.fail(err);
        }
      },
      (err: unknown) => {
        this.acquiring = false;
        // No backend could be opened (the server restarting or down). The client is at a message
        // boundary: it hears the server's refusal as sent (R1, e.g. 57P03) or 08006 (R3), not XX000.
        if (this.phase === 'relaying' && (err instanceof UpstreamRefused || (err instanceof PgError && err.kind === 'upstream'))) {
          this.ctx.metrics.errors.inc({ kind: 'upstream' });
          this.releaseBackend();
          if (err instanceof UpstreamRefused) {
            this.endWith(err.frame);
            this.finish('backend_terminated', `backend_terminated:${err.sqlstate}`);
          } else {
            this.sendFatal(err);
            this.finish('backend_lost');
          }
          return;
        }
        this.fail(err);
      },
    );
  }

  // ---------------------------------------------------------------- relay (hot path)

  private readonly clientHandler: ScanHandler = {
    maxFrameLength: (type) => frontendMaxLength(type, this.maxMessageBytes),
    wantsBody: () => false,
    onFrame: (type, _length, body) => this.noteClientFrame(type, body),
  };

  /** Bookkeeping for one client message: counts, what it will be answered with, session state. */
  private noteClientFrame(type: number, body: Buffer | null): void {
    this.messagesIn++;
    switch (type) {
      case Frontend.Query:
        this.queries++;
        this.rfqExpected++;
        if (body !== null && !this.pinned && hasSessionState(body, false)) this.sessionStateSeen = true;
        return;
      case Frontend.FunctionCall:
        this.queries++;
        this.rfqExpected++;
        return;
      case Frontend.Sync:
        this.rfqExpected++;
        this.unsynced = 0;
        return;
      case Frontend.Execute:
        this.queries++;
        this.unsynced++;
        return;
      case Frontend.Parse:
        this.unsynced++;
        if (body !== null && !this.pinned && hasSessionState(body, true)) this.sessionStateSeen = true;
        return;
      case Frontend.Bind:
      case Frontend.Describe:
      case Frontend.Close:
      case Frontend.Flush:
        this.unsynced++;
        return;
      case Frontend.Terminate:
        this.terminateSeen = true;
        return;
      default:
        return;
    }
  }

  private readonly upstreamHandler: ScanHandler = {
    maxFrameLength: (type) => (BACKEND_TYPES.has(type) ? Limits.largeMessageBytes : -1),
    wantsBody: (type) =>
      type === Backend.ReadyForQuery || type === Backend.ErrorResponse || type === Backend.ParameterStatus || (type === Backend.CommandComplete && this.auditor !== null),
    onFrame: (type, length, body) => {
      this.noteBackendFrame(type, body);
      // Session mode: the client receives exactly the backend's frames.
      if (this.auditor !== null) this.auditServerFrame(type, body, length - 4);
    },
  };

  /** Bookkeeping for one backend message: transaction status, errors, identity parameters. */
  private noteBackendFrame(type: number, body: Buffer | null): void {
    this.messagesOut++;
    if (type === Backend.ReadyForQuery) {
      this.txStatus = body![0] ?? this.txStatus;
      this.rfqReceived++;
      if (this.txStatus === TX_IDLE) {
        this.transactions++;
        this.txSince = 0;
      } else if (this.txSince === 0) this.txSince = this.busySince === 0 ? performance.now() : this.busySince;
      if (this.rfqReceived === this.rfqExpected) {
        this.busySince = 0;
        this.queryCancelSent = false;
        this.idleSince = performance.now();
      }
    } else if (type === Backend.ErrorResponse) {
      const severity = readErrorField(body!, 0x56 /* V */) ?? readErrorField(body!, 0x53 /* S */);
      this.lastUpstreamError = { code: readErrorField(body!, 0x43 /* C */) ?? '', fatal: severity === 'FATAL' || severity === 'PANIC' };
    } else if (type === Backend.ParameterStatus) {
      this.onParameterStatus(body!);
    }
  }

  private relayClientChunk(chunk: Buffer, count = true): void {
    if (count) this.bytesIn += chunk.length;
    if (this.auditor !== null) {
      this.auditClientChunk(chunk);
      return;
    }
    this.relayChunk(chunk);
  }

  /** Client bytes on their way to the backend (after statement audit, when it is on). */
  private relayChunk(chunk: Buffer): void {
    const now = performance.now();
    this.lastClientAt = now;
    if (this.busySince === 0) this.busySince = now; // may be idle again at once: checkTimers looks at the counts
    if (this.upRate !== null && !this.upRate.take(chunk.length, this.onUpBudget)) {
      this.clientThrottled = true;
      this.sock.pause();
    }
    if (this.transactionMode) {
      this.relayClientFrames(chunk);
      if (this.terminateSeen) this.endOnTerminate();
      return;
    }
    const bad = this.clientScanner!.scan(chunk);
    if (bad >= 0) {
      if (bad > 0) this.forwardToBackend(chunk.subarray(0, bad));
      const e = this.clientScanner!.error!;
      throw e instanceof FrameTypeError ? Errors.invalidFrontendType(e.type) : this.lengthError(e);
    }
    this.forwardToBackend(chunk);
    if (this.terminateSeen) this.endOnTerminate();
  }

  // ---------------------------------------------------------------- statement audit

  /**
   * Audited sessions: whole client frames are recorded (session.query) before they go on. For
   * fail-closed sessions the records must be durable first: the client is paused, bytes that
   * still arrive wait in order behind the write, and a failed write ends the session without
   * forwarding the statement (S10). A frame the relay will refuse (bad type or length) ends the
   * batch: what came before it is forwarded, and the relay raises the error on it.
   */
  private auditClientChunk(chunk: Buffer): void {
    if (this.auditWaiting) {
      this.auditQueue.push(chunk);
      return;
    }
    const reader = this.auditReader!;
    reader.push(chunk);
    const frames: Buffer[] = [];
    const events: AuditEvent[] = [];
    let broken = false;
    for (;;) {
      let f: Frame | null;
      try {
        f = reader.nextTyped((type) => frontendMaxLength(type, this.maxMessageBytes));
      } catch {
        broken = true;
        break;
      }
      if (f === null) break;
      const ev = this.auditor!.onClientMessage(f.type, f.body, this.txStatus);
      if (ev !== null) events.push(this.auditEnvelope(ev));
      const guarded = this.staffIdentity?.access === 'read' ? readOnlyGuard(f) : null;
      frames.push(guarded ?? f.raw);
    }
    const tail = broken ? reader.drain() : null;
    const pass = (): void => {
      if (frames.length > 0) this.relayChunk(frames.length === 1 ? frames[0]! : Buffer.concat(frames));
      if (tail !== null && this.phase === 'relaying') this.relayChunk(tail);
    };
    if (!this.auditFailClosed || events.length === 0) {
      for (const e of events) this.ctx.audit.append(e);
      pass();
      return;
    }
    this.auditWaiting = true;
    this.sock.pause();
    Promise.all(events.map((e) => this.ctx.audit.appendDurable(e))).then(
      () => {
        this.auditWaiting = false;
        if (this.phase !== 'relaying') return;
        try {
          pass();
          const queued = this.auditQueue;
          this.auditQueue = [];
          // pass() and each chunk may end the session or start another durable write.
          for (const c of queued) if (this.stillRelaying()) this.auditClientChunk(c);
          if (!this.auditWaitingNow()) this.resumeClient();
        } catch (err) {
          this.fail(err);
        }
      },
      (err: unknown) => {
        this.auditWaiting = false;
        if (this.phase !== 'relaying') return;
        this.ctx.log.error({ session: this.id, tenant: this.tenantId, err }, 'statement could not be audited: ending the session');
        this.ctx.metrics.errors.inc({ kind: 'internal' });
        this.terminate(Errors.auditUnavailableSession(), 'audit_unavailable');
      },
    );
  }

  /** Replies the client receives, matched to the audited statements (session.query_result). */
  private auditServerFrame(type: number, body: Buffer | null, bodyLength: number): void {
    const out: AuditEvent[] = [];
    this.auditor!.onServerMessage(type, body, bodyLength, out);
    for (const e of out) this.ctx.audit.append(this.auditEnvelope(e));
  }

  /** Wraps a statement record in the session's envelope fields. */
  private auditEnvelope(e: AuditEvent): AuditEvent {
    const { ei, ...fields } = e;
    return { ...fields, event: e.event, session: { id: this.id, ei }, tenant: this.tenant!.id, principal: this.principal() };
  }

  private stillRelaying(): boolean {
    return this.phase === 'relaying';
  }

  private auditWaitingNow(): boolean {
    return this.auditWaiting;
  }

  /** Reads the client again unless something else holds it (bandwidth budget, backend backpressure, pool wait). */
  private resumeClient(): void {
    if (this.phase === 'relaying' && !this.clientThrottled && !this.acquiring && !this.auditWaiting && this.backend?.socket.writableNeedDrain !== true) this.sock.resume();
  }

  /** Over the tenant's max_message_bytes (a limit, counted) or over what any message may be (a violation). */
  private lengthError(e: Error | null): PgError {
    if (e instanceof FrameLengthError && e.declared >= 4 && e.declared <= frontendMaxLength(e.type, Limits.largeMessageBytes)) {
      this.noteLimit('max_message_bytes');
      return Errors.messageTooLarge();
    }
    return Errors.invalidLength();
  }

  /** As PostgreSQL: Terminate ends the session and the server closes the connection. */
  private endOnTerminate(): void {
    this.releaseBackend();
    this.sock.end();
    this.finish('client_terminate');
  }

  /** Session mode: scanned client bytes go to the backend as they came; Terminate stays here. */
  private forwardToBackend(chunk: Buffer): void {
    let out = chunk;
    if (this.terminateSeen) {
      // Terminate is the client's last message; the backend is pooled, so it never sees it.
      const n = out.length;
      out = n >= 5 && out[n - 5] === Frontend.Terminate ? out.subarray(0, n - 5) : EMPTY;
      if (out.length === 0) return;
    }
    if (!this.backend!.socket.write(out)) this.sock.pause();
  }

  /** Transaction mode: whole client frames, queued until a backend serves them. */
  private relayClientFrames(chunk: Buffer): void {
    this.txClientReader.push(chunk);
    for (;;) {
      let f: Frame | null;
      try {
        f = this.txClientReader.nextTyped((type) => frontendMaxLength(type, this.maxMessageBytes));
      } catch (err) {
        this.flushClientFrames(); // what came before the bad frame still goes
        if (err instanceof FrameTypeError) throw Errors.invalidFrontendType(err.type);
        if (err instanceof FrameLengthError) throw this.lengthError(err);
        throw err;
      }
      if (f === null) break;
      this.noteClientFrame(f.type, f.type === Frontend.Query || f.type === Frontend.Parse ? f.body : null);
      if (this.terminateSeen) break;
      if (this.sessionStateSeen) {
        this.sessionStateSeen = false;
        if (this.tenant!.pool.sessionState === 'refuse') f = refusedStatement(f);
        else this.pin();
      }
      this.pending.push(f);
    }
    this.flushClientFrames();
  }

  /** Sends the queued client frames, rewritten for the backend at hand; takes a backend first if needed. */
  private flushClientFrames(): void {
    if (this.pending.length === 0) return;
    const b = this.backend;
    if (b === null) {
      this.acquireForTransaction();
      return;
    }
    const frames = this.pending;
    this.pending = [];
    const out: Buffer[] = [];
    const expect: Expectation[] = [];
    for (const f of frames) this.statements.rewrite(f.type, f.body, f.raw, b, out, expect);
    for (const e of expect) this.replies.push(e);
    const up = b.socket;
    up.cork();
    let ok = true;
    for (const part of coalesce(out)) ok = up.write(part);
    up.uncork();
    if (!ok) this.sock.pause();
    // Our own replies that nothing the backend owes precedes (e.g. ParseComplete of a statement it has).
    const mine: Buffer[] = [];
    this.replies.flushSynth(mine);
    for (const m of mine) {
      if (this.auditor !== null) this.auditServerFrame(m[0]!, m.subarray(5), m.length - 5);
      this.sock.write(m);
    }
  }

  /** Transaction mode: from now on this client keeps its backend (SET, LISTEN, temp tables…). */
  private pin(): void {
    if (this.pinned) return;
    this.pinned = true;
    this.ctx.metrics.poolPins.inc({ tenant: this.tenant!.id });
  }

  private readonly onUpstreamData = (chunk: Buffer): void => {
    try {
      this.bytesOut += chunk.length;
      if (this.downRate !== null && !this.downRate.take(chunk.length, this.onDownBudget)) {
        this.backendThrottled = true;
        this.backend?.socket.pause();
      }
      if (this.transactionMode) {
        this.relayBackendFrames(chunk);
        return;
      }
      const scanner = this.upstreamScanner!;
      const boundaryBefore = scanner.atBoundary;
      const bad = scanner.scan(chunk);
      if (bad >= 0) {
        // A hostile or broken server: pass what was well-formed, then end at that boundary. If the
        // bad frame began in an earlier chunk, its first bytes already went out: no clean boundary.
        if (bad > 0) this.sock.write(chunk.subarray(0, bad));
        this.ctx.log.warn({ session: this.id, tenant: this.tenantId, err: scanner.error?.message }, 'backend violated the protocol');
        this.detach(false, false);
        if (bad > 0 || boundaryBefore) this.sendFatal(Errors.upstreamLost());
        else this.sock.destroy();
        this.finish('backend_lost');
        return;
      }
      if (!this.sock.write(chunk)) this.backend!.socket.pause();
    } catch (err) {
      this.fail(err);
    }
  };

  /** Transaction mode: whole backend frames, matched to what was asked; the backend goes back when nothing is owed. */
  private relayBackendFrames(chunk: Buffer): void {
    const reader = this.txBackendReader;
    reader.push(chunk);
    const out: Buffer[] = [];
    for (;;) {
      let f: Frame | null;
      try {
        f = reader.nextTyped((type) => (BACKEND_TYPES.has(type) ? Limits.largeMessageBytes : -1));
      } catch (err) {
        this.ctx.log.warn({ session: this.id, tenant: this.tenantId, err: (err as Error).message }, 'backend violated the protocol');
        this.writeToClient(out);
        this.detach(false, false);
        this.sendFatal(Errors.upstreamLost());
        this.finish('backend_lost');
        return;
      }
      if (f === null) break;
      this.noteBackendFrame(f.type, f.type === Backend.ReadyForQuery || f.type === Backend.ErrorResponse || f.type === Backend.ParameterStatus ? f.body : null);
      this.replies.onReply(f.type, f.raw, out);
    }
    // Transaction mode: audit what the client receives (replies to injected messages are not its).
    if (this.auditor !== null) for (const raw of out) this.auditServerFrame(raw[0]!, raw.subarray(5), raw.length - 5);
    this.writeToClient(out);
    const b = this.backend;
    if (b !== null && !this.pinned && this.pending.length === 0 && this.replies.empty && this.backendIsClean()) {
      b.socket.resume(); // it may have been paused for backpressure; the pool reads it from now on
      this.detach(true, false);
    }
  }

  private writeToClient(out: Buffer[]): void {
    if (out.length === 0) return;
    this.sock.cork();
    let ok = true;
    for (const part of coalesce(out)) ok = this.sock.write(part);
    this.sock.uncork();
    if (!ok) this.backend?.socket.pause();
  }

  private readonly onClientDrain = (): void => {
    if (!this.backendThrottled) this.backend?.socket.resume();
  };

  private readonly onUpstreamDrain = (): void => {
    if (this.phase === 'relaying' && !this.clientThrottled && !this.auditWaiting) this.sock.resume();
  };

  /** The tenant's client-to-server budget has room again: read the client, unless the backend is full. */
  private readonly onUpBudget = (): void => {
    this.clientThrottled = false;
    this.resumeClient();
  };

  /** The tenant's server-to-client budget has room again: read the backend, unless the client is full. */
  private readonly onDownBudget = (): void => {
    this.backendThrottled = false;
    if (this.phase === 'relaying' && !this.sock.writableNeedDrain) this.backend?.socket.resume();
  };

  // ---------------------------------------------------------------- timeouts

  /**
   * Called by the proxy's sweeper ten times a second (one timer for all sessions, none per
   * query): the tenant's query, idle, idle-in-transaction and transaction timeouts.
   */
  checkTimers(now: number, current?: LimitSettings): void {
    if (this.phase !== 'relaying') return;
    const staff = this.staffIdentity;
    if (staff !== null) {
      if (Date.now() >= staff.expMs) return this.terminate(Errors.staffAccessExpired(), 'auth_expired');
      if (this.ctx.isStaffRevoked(staff.jti, staff.sub)) return this.terminate(Errors.adminShutdown('staff_revoked'), 'staff_revoked');
    }
    // The tenant's limits as now configured (a reload changes running sessions' timeouts too).
    const l = current ?? this.tenant!.limits;
    if (this.sendStalled(now, l.sendTimeoutMs)) return;
    const busy = this.rfqReceived < this.rfqExpected || this.unsynced > 0 || this.acquiring;
    if (busy) {
      if (l.queryTimeoutMs > 0 && !this.queryCancelSent && this.busySince > 0 && now - this.busySince >= l.queryTimeoutMs && this.backend !== null) {
        // The server answers the cancel with 57014 (canceling statement due to user request).
        this.queryCancelSent = true;
        this.noteLimit('query_timeout');
        this.cancelRunning();
      }
    } else {
      this.busySince = 0;
      const idleFor = now - Math.max(this.idleSince, this.lastClientAt);
      if (this.txStatus === TX_IDLE) {
        if (l.idleTimeoutMs > 0 && idleFor >= l.idleTimeoutMs) return this.endForLimit(Errors.idleSessionTimeout(), 'idle_timeout');
      } else if (l.idleInTransactionTimeoutMs > 0 && idleFor >= l.idleInTransactionTimeoutMs) {
        return this.endForLimit(Errors.idleInTransactionTimeout(), 'idle_in_txn_timeout');
      }
    }
    if (l.transactionTimeoutMs > 0 && this.txSince > 0 && now - this.txSince >= l.transactionTimeoutMs) {
      this.endForLimit(Errors.transactionTimeout(), 'transaction_timeout');
    }
  }

  /**
   * The send timeout: output is queued past the socket's high-water mark (so the backend is paused)
   * and the client has taken none of it for `send_timeout`. Any progress restarts the clock, so a
   * slow reader is fine and only one that stopped reading is closed. Nothing can be said to a
   * client that does not read, so the socket is destroyed; the backend goes with it (mid-result).
   */
  private sendStalled(now: number, timeoutMs: number): boolean {
    const pending = this.sock.writableLength;
    if (!this.sock.writableNeedDrain || pending === 0) {
      this.sendStalledSince = 0;
    } else if (this.sendStalledSince === 0 || pending < this.lastPendingOut) {
      this.sendStalledSince = now;
    }
    this.lastPendingOut = pending;
    if (timeoutMs <= 0 || this.sendStalledSince === 0 || now - this.sendStalledSince < timeoutMs) return false;
    this.noteLimit('send_timeout');
    this.ctx.log.info({ session: this.id, tenant: this.tenantId, pendingBytes: pending }, 'client stopped reading; send timeout');
    this.sock.destroy();
    this.releaseBackend();
    this.finish('send_timeout');
    return true;
  }

  private endForLimit(err: PgError, reason: 'idle_timeout' | 'idle_in_txn_timeout' | 'transaction_timeout'): void {
    this.noteLimit(reason);
    this.terminate(err, reason);
  }

  private noteLimit(limit: string): void {
    this.ctx.metrics.limitRejections.inc({ tenant: this.tenant!.id, limit });
    if (this.limitEvents.length < 16) this.limitEvents.push(limit);
  }

  private onParameterStatus(body: Buffer): void {
    const p = decodeParameterStatus(body);
    if (p !== null && (p.name === 'session_authorization' || p.name === 'is_superuser')) {
      // Identity changes are audit-worthy (SECURITY.md §2.4); statement audit arrives with issue 5.
      this.ctx.log.info({ session: this.id, tenant: this.tenantId, parameter: p.name, value: p.value }, 'session identity parameter changed');
    }
  }

  private readonly onUpstreamClose = (): void => {
    if (this.phase !== 'relaying') return;
    this.detach(false, false);
    const last = this.lastUpstreamError;
    if (last !== null && last.fatal) {
      // The server already told the client why (forwarded byte for byte).
      this.sock.end();
      this.finish('backend_terminated', `backend_terminated:${last.code}`);
      return;
    }
    if (this.terminateSeen) {
      this.sock.end();
      this.finish('client_terminate');
      return;
    }
    if (this.clientStreamAtBoundary()) this.sendFatal(Errors.upstreamLost());
    else this.sock.destroy();
    this.finish('backend_lost');
  };

  // ---------------------------------------------------------------- client leaving

  private readonly onClientError = (err: Error): void => {
    if (this.phase === 'tls_handshake') {
      this.ctx.metrics.tlsHandshakes.inc({ outcome: 'failed', version: 'none' });
      this.ctx.rejections.record('tls_handshake_failed', this.remoteAddress);
      this.phase = 'closed';
      this.cleanup();
      this.sock.destroy();
      return;
    }
    this.ctx.log.debug({ session: this.id, err: err.message }, 'client socket error');
  };

  private readonly onClientClose = (): void => {
    if (this.phase === 'closed') return;
    if (this.phase === 'relaying') {
      this.releaseBackend();
      this.finish(this.terminateSeen ? 'client_terminate' : 'client_eof');
      return;
    }
    if (this.phase === 'authenticating' || this.phase === 'connecting') {
      this.abortPreauth('client_aborted', this.phase === 'connecting' ? 'backend_connect' : this.saslStage === 'initial' ? 'sasl_first' : 'sasl_final');
      return;
    }
    this.ctx.rejections.record(this.startup === null ? 'client_aborted' : 'client_aborted_startup', this.remoteAddress);
    this.phase = 'closed';
    this.cleanup();
  };

  private readonly onDeadline = (): void => {
    this.deadline = null;
    if (this.phase === 'closed' || this.phase === 'relaying') return;
    if (this.phase === 'authenticating' || this.phase === 'connecting') {
      this.auditAuthFailure(this.phase === 'connecting' ? 'backend_connect' : 'sasl_first', 'auth_timeout', '08006', 'authentication timed out');
      this.sendFatal(Errors.authTimeout());
      this.phase = 'closed';
      this.cleanup();
      return;
    }
    // Still in the startup packet or TLS handshake: close silently, as PostgreSQL does.
    this.ctx.rejections.record('auth_timeout', this.remoteAddress);
    this.phase = 'closed';
    this.cleanup();
    this.sock.destroy();
  };

  // ---------------------------------------------------------------- endings

  /** Operator or drain: FATAL at a message boundary, then close. */
  terminate(err: PgError, reason: CloseReason): void {
    if (this.phase === 'closed') return;
    if (this.phase !== 'relaying') {
      this.sendFatal(err);
      this.phase = 'closed';
      this.cleanup();
      return;
    }
    if (this.clientStreamAtBoundary()) this.sendFatal(err);
    else this.sock.destroy();
    this.releaseBackend();
    this.finish(reason);
  }

  /** The error boundary: PgError goes to the client as is, anything else is a bug (XX000). */
  private fail(err: unknown): void {
    if (this.phase === 'closed') return;
    const pgErr = err instanceof PgError ? err : Errors.internal();
    if (!(err instanceof PgError)) {
      this.ctx.log.error({ session: this.id, err }, 'internal error in session');
    }
    this.ctx.metrics.errors.inc({ kind: pgErr.kind });
    if (this.phase === 'relaying') {
      this.sendFatal(pgErr);
      this.releaseBackend();
      this.finish(pgErr.kind === 'client' ? 'protocol_violation' : pgErr.reason === 'pool_timeout' ? 'pool_timeout' : pgErr.kind === 'limit' ? 'limit' : 'internal');
      return;
    }
    if (this.startup !== null) {
      this.auditAuthFailure(this.phase === 'authenticating' ? (this.saslStage === 'initial' ? 'sasl_first' : 'sasl_final') : 'startup', pgErr.reason, pgErr.sqlstate, pgErr.message);
      if (pgErr.kind === 'auth') this.countAuthFailure(pgErr.reason);
    } else {
      this.ctx.rejections.record(pgErr.reason, this.remoteAddress);
    }
    this.sendFatal(pgErr);
    this.phase = 'closed';
    this.cleanup();
  }

  private authFailed(err: PgError, stage: AuthStage): void {
    this.countAuthFailure(err.reason);
    this.ctx.metrics.errors.inc({ kind: err.kind });
    this.auditAuthFailure(stage, err.reason, err.sqlstate, err.message);
    this.ctx.log.info({ session: this.id, tenant: this.tenant?.id ?? null, client: this.remoteAddress, reason: err.reason }, 'authentication failed');
    this.sendFatal(err);
    this.phase = 'closed';
    this.cleanup();
  }

  private countAuthFailure(reason: string): void {
    const tenant = this.tenant === undefined ? 'unknown' : this.tenant.id;
    this.ctx.metrics.authFailures.inc({ tenant, reason });
    this.ctx.metrics.sessions.inc({ tenant, outcome: 'auth_failed' });
    // Counts toward the cool-downs; a store that cannot be reached just forgets (it is degraded).
    this.ctx.limits.noteAuthFailure(this.lockoutRules()).catch((err: unknown) => this.ctx.log.warn({ err }, 'could not record an authentication failure'));
  }

  private abortPreauth(reason: string, stage: AuthStage): void {
    this.auditAuthFailure(stage, reason, undefined, undefined);
    this.phase = 'closed';
    this.cleanup();
    this.sock.destroy();
  }

  /** Pre-startup noise: aggregated audit, then close without a message (N4). */
  private reject(reason: string): void {
    this.ctx.rejections.record(reason, this.remoteAddress);
    this.phase = 'closed';
    this.cleanup();
    this.sock.destroy();
  }

  private closeQuietly(): void {
    this.phase = 'closed';
    this.cleanup();
    this.sock.end();
    this.sock.destroySoon();
  }

  private sendFatal(err: PgError): void {
    this.endWith(err.toFrame());
  }

  private endWith(frame: Buffer): void {
    if (this.sock.destroyed) return;
    this.sock.end(frame);
    // Keep reading (and discarding) so the peer's FIN is seen; a paused socket would linger.
    this.sock.resume();
    const s = this.sock;
    setTimeout(() => s.destroy(), CLOSE_GRACE_MS).unref();
  }

  /** Ends a started session: audit, metrics, slots. */
  private finish(reason: CloseReason, detail?: string): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    if (this.started) {
      const tenant = this.tenant!.id;
      this.foldTraffic(this.ctx.metrics);
      this.ctx.metrics.liveSessions.delete(this);
      this.ctx.metrics.clientConnections.dec({ tenant });
      this.ctx.metrics.sessionEnds.inc({ tenant, reason });
      if (this.auditor !== null) {
        const out: AuditEvent[] = [];
        this.auditor.abandon(out);
        for (const e of out) this.ctx.audit.append(this.auditEnvelope(e));
      }
      this.auditSessionEnd(detail ?? reason);
      this.ctx.log.info({ session: this.id, tenant, reason: detail ?? reason, durationMs: Date.now() - this.startedAt, bytesIn: this.bytesIn, bytesOut: this.bytesOut }, 'session ended');
    }
    this.cleanup();
  }

  /** Releases everything held; idempotent. */
  private cleanup(): void {
    this.clearDeadline();
    if (this.preauthLease !== null) {
      this.preauthLease.release();
      this.preauthLease = null;
      this.ctx.metrics.preauthConnections.dec();
    }
    this.tenantLease?.release();
    this.tenantLease = null;
    this.upRate?.forget(this.onUpBudget);
    this.downRate?.forget(this.onDownBudget);
    if (this.cancelKey !== null) {
      this.ctx.cancels.release(this.cancelKey.processId);
      this.cancelKey = null;
    }
    this.ctx.onClosed(this);
  }

  private clearDeadline(): void {
    if (this.deadline !== null) {
      clearTimeout(this.deadline);
      this.deadline = null;
    }
  }

  foldTraffic(m: Metrics): void {
    const tenant = this.tenant?.id ?? 'unknown';
    if (this.bytesIn !== this.foldedBytesIn) {
      m.bytes.inc({ tenant, direction: 'client_to_upstream' }, this.bytesIn - this.foldedBytesIn);
      this.foldedBytesIn = this.bytesIn;
    }
    if (this.bytesOut !== this.foldedBytesOut) {
      m.bytes.inc({ tenant, direction: 'upstream_to_client' }, this.bytesOut - this.foldedBytesOut);
      this.foldedBytesOut = this.bytesOut;
    }
    if (this.messagesIn !== this.foldedMessagesIn) {
      m.messages.inc({ tenant, direction: 'client_to_upstream' }, this.messagesIn - this.foldedMessagesIn);
      this.foldedMessagesIn = this.messagesIn;
    }
    if (this.queries !== this.foldedQueries) {
      m.queries.inc({ tenant }, this.queries - this.foldedQueries);
      this.foldedQueries = this.queries;
    }
    if (this.transactions !== this.foldedTransactions) {
      m.transactions.inc({ tenant }, this.transactions - this.foldedTransactions);
      this.foldedTransactions = this.transactions;
    }
    if (this.messagesOut !== this.foldedMessagesOut) {
      m.messages.inc({ tenant, direction: 'upstream_to_client' }, this.messagesOut - this.foldedMessagesOut);
      this.foldedMessagesOut = this.messagesOut;
    }
  }

  // ---------------------------------------------------------------- audit records

  private clientBlock(): Record<string, unknown> {
    return {
      addr: this.remoteAddress,
      port: this.remotePort,
      via_proxy_protocol: false,
      application_name: this.startup?.applicationName === undefined ? null : { value: sanitizeName(this.startup.applicationName), untrusted: true },
      tls: {
        negotiation: this.tlsNegotiation,
        version: this.tlsVersion,
        cipher: this.tlsCipher,
        sni: this.sni === undefined ? null : sanitizeName(this.sni),
        alpn: this.sock instanceof tls.TLSSocket ? this.sock.alpnProtocol || null : null,
      },
      protocol: '3.0',
    };
  }

  private principal(): Record<string, unknown> {
    const s = this.startup!;
    const database = s.database ?? this.tenant?.backendDatabase ?? null;
    const c = this.staffClaims;
    if (c === null) return { kind: 'tenant_user', db_user: s.user, database };
    return { kind: 'staff', db_user: this.tenant?.staffBackendUser ?? null, database, staff: { ...c, access: this.staffIdentity?.access ?? null } };
  }

  private auditAuthFailure(stage: AuthStage, reason: string, sqlstate: string | undefined, message: string | undefined): void {
    const s = this.startup;
    this.ctx.audit.append({
      event: 'session.auth_failure',
      session: { id: this.id, ei: this.auditEi++ },
      ...(this.tenant === undefined ? {} : { tenant: this.tenant.id }),
      client: this.clientBlock(),
      stage,
      claimed: {
        tenant: s === null ? null : sanitizeName(s.tenantId),
        db_user: s === null ? null : sanitizeName(s.user),
        database: s?.database === undefined ? null : sanitizeName(s.database),
      },
      reason,
      outcome: { success: false, ...(sqlstate === undefined ? {} : { sqlstate }), ...(message === undefined ? {} : { message_sent: message }), reason },
    });
  }

  private auditSessionStart(backend: PooledBackend | null): void {
    const tenant = this.tenant!;
    const s = this.startup!;
    const p = this.pool!.parametersFor(this.poolKeyStr) ?? backend?.conn.parameters ?? new Map<string, string>();
    this.ctx.audit.append({
      event: 'session.start',
      session: { id: this.id, ei: this.auditEi++ },
      tenant: tenant.id,
      principal: this.principal(),
      client: this.clientBlock(),
      backend: { id: tenant.id, pid: backend?.processId ?? null, tls_version: backend?.conn.tlsVersion ?? null, pool_mode: tenant.pool.mode },
      auth:
        this.staffIdentity !== null
          ? { method: 'jwt', channel_binding: false }
          : { method: this.scram?.usedChannelBinding === true ? 'scram-sha-256-plus' : 'scram-sha-256', channel_binding: this.scram?.usedChannelBinding === true },
      statement_audit: this.auditor === null ? 'none' : this.auditFailClosed ? 'fail_closed' : 'best_effort',
      startup_params: Object.fromEntries([...s.forward].map(([k, v]) => [k, sanitizeName(v)])),
      // A staff session with a reserve is counted apart: the figures are its staff slots', and `counted_in` says so.
      limits: {
        tenant_active_after: this.tenantActiveAfter,
        tenant_limit: this.staffSlots > 0 ? this.staffSlots : tenant.maxClientConnections,
        mode: this.ctx.limits.mode,
        counted_in: this.staffSlots > 0 ? 'staff_reserved' : 'tenant',
      },
      server_version: p.get('server_version') ?? null,
      client_encoding: p.get('client_encoding') ?? null,
      session_authorization: p.get('session_authorization') ?? null,
      is_superuser: p.get('is_superuser') ?? null,
      outcome: { success: true },
    });
  }

  private auditSessionEnd(reason: string): void {
    this.ctx.audit.append({
      event: 'session.end',
      session: { id: this.id, ei: this.auditEi++ },
      tenant: this.tenant!.id,
      principal: this.principal(),
      client: { addr: this.remoteAddress, port: this.remotePort },
      backend: { id: this.tenant!.id, pid: this.loginBackendPid, pinned: this.pinned },
      reason,
      duration_ms: Date.now() - this.startedAt,
      bytes_in: this.bytesIn,
      bytes_out: this.bytesOut,
      messages_in: this.messagesIn,
      messages_out: this.messagesOut,
      queries: this.queries,
      statements_audited: this.auditor?.statementsAudited ?? 0,
      last_tx_status: String.fromCharCode(this.txStatus),
      limits_hit: this.limitEvents,
      outcome: { success: true },
    });
  }
}

/** Per-tenant allowlist; IPv4-mapped IPv6 addresses are checked as IPv4. */
function isAllowedSource(tenant: TenantConfig, addr: string): boolean {
  const v4 = addr.startsWith('::ffff:') ? addr.slice(7) : addr;
  if (isIPv4(v4)) return tenant.allowList.check(v4, 'ipv4');
  return tenant.allowList.check(addr, 'ipv6');
}

const EMPTY = Buffer.alloc(0);

/**
 * session_state = "refuse": the statement is replaced by one that fails on the server with 0A000,
 * so the server itself reports the error and sets the transaction status, as it would for any error.
 */
const REFUSAL_SQL =
  "DO $pgwarden$BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = 'statements that change session state are not supported in transaction pooling mode', HINT = 'Use SET LOCAL, or a session-mode pool.'; END$pgwarden$";

function refusedStatement(f: Frame, sql = REFUSAL_SQL): Frame {
  let body: Buffer;
  if (f.type === Frontend.Query) body = Buffer.from(`${sql}\0`, 'utf8');
  else body = refusedParseBody(f.body, sql);
  const raw = Buffer.allocUnsafe(5 + body.length);
  raw[0] = f.type;
  raw.writeUInt32BE(4 + body.length, 1);
  body.copy(raw, 5);
  return { type: f.type, body: raw.subarray(5), raw };
}

/** Oid of `text`: parameters the refused statement must still accept but never uses. */
const TEXT_OID = 25;

/**
 * A Parse of `sql` under the client's statement name that still declares as many parameters as
 * the client's statement had (its declared types, then text for each further $n in its text), so
 * the client's Bind succeeds and Execute reaches the raising block: the client sees the refusal's
 * SQLSTATE, not a bind error.
 */
function refusedParseBody(orig: Buffer, sql: string): Buffer {
  const nameEnd = orig.indexOf(0);
  const queryEnd = orig.indexOf(0, nameEnd + 1);
  let declared: number[] = [];
  if (queryEnd > 0 && queryEnd + 3 <= orig.length) {
    const n = orig.readInt16BE(queryEnd + 1);
    if (n > 0 && queryEnd + 3 + 4 * n <= orig.length) declared = Array.from({ length: n }, (_, i) => orig.readUInt32BE(queryEnd + 3 + 4 * i));
  }
  let used = 0;
  for (const m of orig.toString('utf8', nameEnd + 1, queryEnd < 0 ? orig.length : queryEnd).matchAll(/\$(\d{1,5})/g)) used = Math.max(used, Number(m[1]));
  const count = Math.min(Math.max(declared.length, used), 65_535);
  const types = Buffer.alloc(2 + 4 * count);
  types.writeUInt16BE(count, 0);
  for (let i = 0; i < count; i++) types.writeUInt32BE(declared[i] ?? TEXT_OID, 2 + 4 * i);
  return Buffer.concat([orig.subarray(0, nameEnd + 1), Buffer.from(`${sql}\0`, 'utf8'), types]);
}

/**
 * Staff read access: statements that would turn the read-only default off are refused by the
 * server itself with 25006. Defence in depth only (text can be disguised); the real guard is a
 * staff_backend_user with read grants only.
 */
const READ_WRITE_RE = /\bread(?:\s|\/\*[\s\S]*?\*\/|--[^\n]*\n)+write\b|transaction_read_only/i;
const READ_ONLY_REFUSAL_SQL =
  "DO $pgwarden$BEGIN RAISE EXCEPTION USING ERRCODE = 'read_only_sql_transaction', MESSAGE = 'staff read access cannot leave read-only mode'; END$pgwarden$";

function readOnlyGuard(f: Frame): Buffer | null {
  if (f.type !== Frontend.Query && f.type !== Frontend.Parse) return null;
  const text = f.type === Frontend.Query ? f.body.toString('utf8') : f.body.toString('utf8', f.body.indexOf(0) + 1);
  if (!READ_WRITE_RE.test(text)) return null;
  return refusedStatement(f, READ_ONLY_REFUSAL_SQL).raw;
}

/** Joins frames that sit back to back in the same received buffer, so they go out as one write. */
function coalesce(parts: Buffer[]): Buffer[] {
  if (parts.length < 2) return parts;
  const out: Buffer[] = [];
  let run = parts[0]!;
  for (let i = 1; i < parts.length; i++) {
    const p = parts[i]!;
    if (p.buffer === run.buffer && p.byteOffset === run.byteOffset + run.length) {
      run = Buffer.from(run.buffer, run.byteOffset, run.length + p.length);
    } else {
      out.push(run);
      run = p;
    }
  }
  out.push(run);
  return out;
}
const TX_IDLE = 0x49; // 'I'
