/**
 * Splits socket chunks into protocol frames and enforces length limits before buffering.
 * Owns framing only; what a frame means is decided by the caller.
 *
 * Two readers for two phases:
 * - FrameReader buffers whole frames before authentication, where every message is
 *   small and must be decoded.
 * - FrameScanner walks frame headers on the relay without copying: it reports each frame's
 *   type and length, captures the body only when the handler asks (ReadyForQuery, ErrorResponse),
 *   and leaves the chunk itself to be forwarded whole.
 */

/** A frame's declared length is out of range; `declared` is what the peer claimed. */
export class FrameLengthError extends Error {
  constructor(
    readonly type: number,
    readonly declared: number,
  ) {
    super(`invalid message length ${declared} for type ${type}`);
  }
}

/** A frame's type byte is not valid in this phase. */
export class FrameTypeError extends Error {
  constructor(readonly type: number) {
    super(`invalid message type ${type}`);
  }
}

export interface Frame {
  /** Type byte, or -1 for the untyped startup-phase message. */
  readonly type: number;
  /** Body without the type byte and the length word. */
  readonly body: Buffer;
  /** The whole frame as received (a view, no copy), for forwarding it unchanged. */
  readonly raw: Buffer;
}

const EMPTY = Buffer.alloc(0);

/**
 * Accumulates chunks and yields whole frames. One instance per connection; a frame spanning
 * chunks is concatenated once. The caller passes the limits of the current phase to next().
 */
export class FrameReader {
  private buf: Buffer = EMPTY;
  private offset = 0;

  push(chunk: Buffer): void {
    if (this.offset >= this.buf.length) {
      this.buf = chunk;
      this.offset = 0;
    } else {
      this.buf = Buffer.concat([this.buf.subarray(this.offset), chunk]);
      this.offset = 0;
    }
  }

  /** Bytes received but not yet consumed. */
  get buffered(): number {
    return this.buf.length - this.offset;
  }

  /** The next unconsumed byte, or -1 when none is here. */
  peekByte(): number {
    return this.offset < this.buf.length ? this.buf[this.offset]! : -1;
  }

  /** Returns and clears the unconsumed bytes (used when a connection changes hands). */
  drain(): Buffer {
    const rest = this.buf.subarray(this.offset);
    this.buf = EMPTY;
    this.offset = 0;
    return rest;
  }

  /**
   * Next untyped frame (startup, SSLRequest, CancelRequest): Int32 length including itself.
   * Returns null until the whole frame is here. Throws FrameLengthError unless the body (the
   * length word not counted, as in PostgreSQL's ProcessStartupPacket) is 4 to maxBodyBytes long.
   */
  nextUntyped(maxBodyBytes: number): Frame | null {
    if (this.buffered < 4) return null;
    const length = this.buf.readUInt32BE(this.offset);
    // PostgreSQL: len - 4 < 4 (no version word) or len - 4 > MAX_STARTUP_PACKET_LENGTH is rejected.
    if (length < 8 || length - 4 > maxBodyBytes) throw new FrameLengthError(-1, length);
    if (this.buffered < length) return null;
    const raw = this.buf.subarray(this.offset, this.offset + length);
    this.offset += length;
    return { type: -1, body: raw.subarray(4), raw };
  }

  /**
   * Next typed frame. The type byte is checked before the length (SECURITY.md rule 1):
   * `maxLengthFor(type)` returns the cap including the length word, or -1 for an invalid type.
   */
  nextTyped(maxLengthFor: (type: number) => number): Frame | null {
    if (this.buffered < 1) return null;
    const type = this.buf[this.offset]!;
    const max = maxLengthFor(type);
    if (max < 0) throw new FrameTypeError(type);
    if (this.buffered < 5) return null;
    const length = this.buf.readUInt32BE(this.offset + 1);
    if (length < 4 || length > max) throw new FrameLengthError(type, length);
    if (this.buffered < 1 + length) return null;
    const raw = this.buf.subarray(this.offset, this.offset + 1 + length);
    this.offset += 1 + length;
    return { type, body: raw.subarray(5), raw };
  }
}

/** What a FrameScanner reports to. Methods, not closures, so the hot path allocates nothing. */
export interface ScanHandler {
  /** Cap for this type including the length word; -1 marks the type invalid. */
  maxFrameLength(type: number): number;
  /** Whether onFrame needs the body of this type (it is then captured, copied if split). */
  wantsBody(type: number): boolean;
  /** Called once per complete frame header (and body, when wanted). */
  onFrame(type: number, length: number, body: Buffer | null): void;
}

/**
 * Walks frame headers across chunks. scan() returns -1 when the whole chunk is well-formed
 * so far, or the offset of the first byte of the offending frame after reporting the error
 * through `error`; bytes before that offset are whole frames that may be forwarded.
 */
export class FrameScanner {
  /** Body bytes of the current frame not yet seen. */
  private remaining = 0;
  /**
   * A header split across chunks is gathered here; made the first time one is, since a Buffer of
   * its own costs an ArrayBuffer and a native backing store for the connection's life (issue 15).
   */
  private header: Buffer | null = null;
  private headerFill = 0;
  private captureBuf: Buffer | null = null;
  private captureFill = 0;
  private currentType = 0;
  private currentLength = 0;
  /** Set when scan() stops at a bad frame. */
  error: FrameLengthError | FrameTypeError | null = null;
  /**
   * During onFrame for a frame whose body is not captured across chunks: where the frame began in
   * the chunk being scanned (negative when its first bytes came in an earlier chunk).
   */
  frameStart = 0;

  constructor(private readonly handler: ScanHandler) {}

  /** True when the scanner sits on a frame boundary (never after an error: the stream is broken). */
  get atBoundary(): boolean {
    return this.remaining === 0 && this.headerFill === 0 && this.error === null;
  }

  scan(chunk: Buffer): number {
    const n = chunk.length;
    let pos = 0;
    while (pos < n) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - pos);
        if (this.captureBuf !== null) {
          chunk.copy(this.captureBuf, this.captureFill, pos, pos + take);
          this.captureFill += take;
        }
        this.remaining -= take;
        pos += take;
        if (this.remaining === 0 && this.captureBuf !== null) {
          const body = this.captureBuf;
          this.captureBuf = null;
          this.handler.onFrame(this.currentType, this.currentLength, body);
        }
        continue;
      }
      // Header: fast path when all 5 bytes are in this chunk.
      let type: number;
      let length: number;
      if (this.headerFill === 0 && n - pos >= 5) {
        type = chunk[pos]!;
        const max = this.handler.maxFrameLength(type);
        if (max < 0) return this.fail(new FrameTypeError(type), pos);
        length = chunk.readUInt32BE(pos + 1);
        if (length < 4 || length > max) return this.fail(new FrameLengthError(type, length), pos);
        this.frameStart = pos;
        pos += 5;
      } else {
        if (this.headerFill === 0) {
          const max = this.handler.maxFrameLength(chunk[pos]!);
          if (max < 0) return this.fail(new FrameTypeError(chunk[pos]!), pos);
        }
        const frameStart = pos - this.headerFill; // may be negative: the frame began in an earlier chunk
        const take = Math.min(5 - this.headerFill, n - pos);
        const header = (this.header ??= Buffer.alloc(5));
        chunk.copy(header, this.headerFill, pos, pos + take);
        this.headerFill += take;
        pos += take;
        if (this.headerFill < 5) break;
        this.headerFill = 0;
        type = header[0]!;
        length = header.readUInt32BE(1);
        const max = this.handler.maxFrameLength(type);
        if (length < 4 || length > max) return this.fail(new FrameLengthError(type, length), Math.max(frameStart, 0));
        this.frameStart = frameStart;
      }
      const bodyLength = length - 4;
      if (!this.handler.wantsBody(type)) {
        this.handler.onFrame(type, length, null);
        this.remaining = bodyLength;
        continue;
      }
      if (n - pos >= bodyLength) {
        // Whole body in this chunk: hand out a view, no copy.
        const body = chunk.subarray(pos, pos + bodyLength);
        pos += bodyLength;
        this.handler.onFrame(type, length, body);
        continue;
      }
      this.currentType = type;
      this.currentLength = length;
      this.captureBuf = Buffer.allocUnsafe(bodyLength); // fully written before use
      this.captureFill = 0;
      this.remaining = bodyLength;
    }
    return -1;
  }

  private fail(err: FrameLengthError | FrameTypeError, at: number): number {
    this.error = err;
    return at;
  }
}
