/**
 * The pino logger. JSON lines to stdout; state changes at info, per-frame detail only behind
 * isLevelEnabled('trace'). Redaction is a second line of defence: code never logs secrets.
 */
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'pgwarden' },
      redact: { paths: ['password', '*.password', 'token', '*.token', 'verifier', '*.verifier', 'scram', '*.scram'], censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
}
