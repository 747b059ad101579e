// The SQL analysis library's public surface (the session wires it in): parse once loaded, fast path, analysis,
// splice + verify, cache. See docs/sql-support.md.
export { loadParser } from './parser.js';
export { mayTouchProtected, buildNameIndex, OPAQUE_WORDS, type ProtectedNameIndex } from './fastpath.js';
export { analyse, catalogIndex, qualified, type CatalogIndex } from './analyse.js';
export {
  splice,
  verifySplice,
  rewrite,
  byteaLiteral,
  byteaEdit,
  paramCastEdit,
  nullEdit,
  typeNameEdit,
  SpliceError,
  type Edit,
  type Expected,
  type ExpectedEdit,
} from './splice.js';
export { AnalysisCache, LruCache, analysisKey, type AnalysisKeyParts } from './cache.js';
export { rewriteInShape, type ShapeEntry } from './shape.js';
export type * from './types.js';
