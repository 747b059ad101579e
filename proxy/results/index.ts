// Public API of the result, parameter and error transforms for protected columns (docs/results.md).
export { StaticCellKeys, type CellKeys } from './keys.js';
export {
  RowError,
  RowRewriter,
  arrayOid,
  rewriteParameterDescription,
  rewriteRowDescription,
  type FieldAction,
  type FieldPlan,
  type RowErrorReason,
  type RowRewriterOptions,
} from './rows.js';
export { columnName, logicalTypeOid, toLogicalType } from './logical.js';
export { ByteaSyntaxError, decodeByteaText, encodeByteaEscape, encodeByteaHex, parseByteaInput } from './bytea.js';
export {
  ParamError,
  encodeByteaArray,
  encryptBindParams,
  encryptLiteral,
  parseArrayText,
  rewriteParseTypes,
  type Encrypt,
  type ParamPlan,
} from './params.js';
export { redactServerError } from './errors.js';
export { canonicalEncodingName, clientCodec, maskMultibyte, type ClientCodec } from './client-encoding.js';
