/**
 * SCRAM-SHA-256(-PLUS) with the client: AuthenticationSASL, the client-first and client-final
 * messages, until the proof is checked. The math is auth/scram.ts's; this file is the exchange
 * on the wire, as PostgreSQL's CheckSASLAuth runs it.
 * @see https://www.postgresql.org/docs/current/sasl-authentication.html
 */
import { timingSafeEqual } from 'node:crypto';
import { Errors } from '../../errors.js';
import { encodeAuthenticationSASL, encodeAuthenticationSASLContinue } from '../../protocol/backend.js';
import { Frontend, Limits } from '../../protocol/codes.js';
import { decodeSASLInitialResponse, SASLInitialResponseError } from '../../protocol/frontend.js';
import { ScramServerExchange, type ScramVerifier } from '../../auth/scram.js';
import type { ClientConn } from '../client-conn.js';
import type { LoginPlan } from './admission.js';
import { AuthFailure, type Authenticated, type Authenticator, type LoginProgress, type VerifierSource } from './authenticator.js';
import { readAuthMessage } from './auth-message.js';

const saslLength = (type: number): number => (type === Frontend.Password ? Limits.saslBytes : -1);

/**
 * One ClientKey per verifier for all its sessions (SCRAM pass-through keeps it for the session's
 * life): a checked proof means SHA-256(ClientKey) = StoredKey, so every session of a verifier
 * recovers the same key, and thousands of idle sessions need not each hold a copy (issue 15).
 */
const clientKeys = new WeakMap<ScramVerifier, Buffer>();

function sharedClientKey(verifier: ScramVerifier, key: Buffer): Buffer {
  const known = clientKeys.get(verifier);
  if (known !== undefined && known.length === key.length && timingSafeEqual(known, key)) return known;
  clientKeys.set(verifier, key);
  return key;
}

/** AuthenticationSASL with and without channel binding on offer: two constant frames. */
const SASL_WITH_PLUS = encodeAuthenticationSASL(ScramServerExchange.mechanisms(true));
const SASL_WITHOUT_PLUS = encodeAuthenticationSASL(ScramServerExchange.mechanisms(false));

export class ScramLogin implements Authenticator {
  constructor(
    private readonly verifiers: VerifierSource,
    /** tls-server-end-point data when the client is on TLS, else null (no PLUS offered). */
    private readonly binding: Buffer | null,
  ) {}

  async authenticate(conn: ClientConn, plan: LoginPlan, negotiate: Buffer | null, progress: LoginProgress): Promise<Authenticated> {
    // auth_query: the verifier comes from the tenant's server; a failure there is audited as a backend connect.
    if (plan.lookup) progress.stage = 'backend_connect';
    const choice = await this.verifiers.verifierFor(plan);
    const verifier = choice.verifier;
    const scram = new ScramServerExchange(verifier, choice.failReason, plan.startup.user, this.binding);
    progress.stage = 'sasl_first';
    const request = this.binding !== null ? SASL_WITH_PLUS : SASL_WITHOUT_PLUS;
    if (negotiate !== null) conn.send(negotiate, request);
    else conn.send(request);

    let initial;
    try {
      initial = decodeSASLInitialResponse((await readAuthMessage(conn, saslLength, 'sasl')).body);
    } catch (err) {
      if (!(err instanceof SASLInitialResponseError)) throw err;
      // As PostgreSQL: the mechanism is checked as soon as it is read, then the layout, in its words.
      if (err.mechanism !== null && !scram.acceptsMechanism(err.mechanism)) throw Errors.invalidMechanism();
      throw Errors.invalidFormat(err.message);
    }
    let data = initial.data;
    if (data === null) {
      // Initial-response length -1: no client-first-message yet. PostgreSQL checks the mechanism,
      // answers an empty AuthenticationSASLContinue and reads it from the next SASLResponse.
      if (!scram.acceptsMechanism(initial.mechanism)) throw Errors.invalidMechanism();
      conn.send(encodeAuthenticationSASLContinue(Buffer.alloc(0)));
      data = (await readAuthMessage(conn, saslLength, 'sasl')).body;
    }
    conn.send(encodeAuthenticationSASLContinue(scram.clientFirst(initial.mechanism, data)));

    progress.stage = 'sasl_final';
    const result = scram.clientFinal((await readAuthMessage(conn, saslLength, 'sasl')).body);
    if (!result.ok) {
      if (choice.failReason === null) this.verifiers.proofFailed(plan, choice);
      throw new AuthFailure(result.error, 'sasl_final');
    }
    progress.clientDone();
    return { kind: 'scram', serverFinal: result.serverFinal, clientKey: sharedClientKey(verifier, result.clientKey), verifier, channelBinding: scram.usedChannelBinding };
  }
}
