// Server errors and notices on their way to the client: fields that can echo row values are dropped when
// the error concerns a protected table (proxy/errors.ts decides which), and any cell that still appears
// in a kept field (as bytea hex) is cut out, since a deterministic cell is itself an equality oracle.
import { redactErrorFields } from '../errors.js';
import { decodeNoticeFields, encodeErrorResponse, encodeNoticeResponse } from '../wire/backend.js';
import { BE, ProtocolError } from '../wire/types.js';

// `\xff6d01` + mode byte: a cell rendered in bytea hex output (either case; the server prints lower case).
const CELL_HEX = /\\x[fF][fF]6[dD]010[12][0-9a-fA-F]*/g;
const CELL_MARK = /\\x[fF][fF]6[dD]010[12]/;

/**
 * An ErrorResponse ('E') or NoticeResponse ('N') body → the full message to forward: the original bytes when
 * nothing needs to change, otherwise re-encoded without D/W/q/p/P (when it names one of `protectedTables`,
 * or always when none are given) and with cells in the remaining fields replaced by `\x…`.
 */
export function redactServerError(type: number, body: Buffer, protectedTables?: Iterable<string>): Buffer {
  if (type !== BE.ErrorResponse && type !== BE.NoticeResponse) throw new ProtocolError('not an error or notice');
  const fields = decodeNoticeFields(body, type === BE.ErrorResponse ? 'ErrorResponse' : 'NoticeResponse');
  const redacted = redactErrorFields(fields, protectedTables);
  let changed = Object.keys(redacted).length !== Object.keys(fields).length;
  for (const code of Object.keys(redacted)) {
    const v = redacted[code];
    if (v !== undefined && CELL_MARK.test(v)) {
      redacted[code] = v.replace(CELL_HEX, '\\x…');
      changed = true;
    }
  }
  if (!changed) {
    const out = Buffer.allocUnsafe(5 + body.length);
    out[0] = type;
    out.writeInt32BE(4 + body.length, 1);
    body.copy(out, 5);
    return out;
  }
  return type === BE.ErrorResponse ? encodeErrorResponse(redacted) : encodeNoticeResponse(redacted);
}
