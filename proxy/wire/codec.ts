// One import point for the wire codecs: message types and constants, byte helpers, startup-phase,
// frontend and backend codecs. The framer (framer.ts) is separate.
export * from './types.js';
export { readCString, Reader, Writer } from './bytes.js';
export * from './startup.js';
export * from './frontend.js';
export * from './backend.js';
