// Public API of the cell cipher and format (docs/ciphertext-format.md).
export {
  CELL_HEADER_BYTES,
  CellDecryptError,
  encodeCellHeader,
  isCell,
  parseCellHeader,
  type CellHeader,
  type CellMode,
} from './format.js';
export { cellKeyFromBytes, decryptCell, encryptCell, forgetCellKey, type CellKey } from './cell.js';
export { sivDecrypt, sivEncrypt, type SivKey } from './siv.js';
