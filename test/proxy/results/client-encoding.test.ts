// mamori's client-encoding codecs against PostgreSQL's own conversions: for every supported encoding, every
// BMP character encodes to the bytes PostgreSQL gives it (or is unrepresentable in both), and every byte
// sequence mamori accepts reads as PostgreSQL reads it. Plus the name rules and the multibyte masking.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import { candidateSequences, pgDecode, pgEncodeBmp } from '../../harness/encodings.js';
import { CONVERTERS, canonicalEncodingName, clientCodec, embedsAscii, maskMultibyte } from '../../../proxy/results/client-encoding.js';

const MULTIBYTE = new Set(['EUC_JP', 'SJIS', 'UHC', 'GB18030']);

describe('client encodings against PostgreSQL', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster({ tls: false });
  });
  after(async () => {
    await c?.stop();
  });

  for (const name of Object.keys(CONVERTERS)) {
    test(`${name}: encoding and decoding agree with the server`, async () => {
      const codec = clientCodec(name)!;
      assert.equal(codec.name, name);
      const pgBytes = await pgEncodeBmp(c, name);
      const wrong: string[] = [];
      let representable = 0;
      for (const [cp, b] of pgBytes) {
        const mine = codec.encode(String.fromCodePoint(cp));
        if (b !== null) representable++;
        if ((mine === null) !== (b === null) || (mine && b && !mine.equals(b))) wrong.push(`U+${cp.toString(16)}`);
      }
      assert.deepEqual(wrong, [], `characters encoded unlike PostgreSQL in ${name}`);
      assert.ok(representable > 100);
      const seqs = candidateSequences(name, MULTIBYTE.has(name));
      const pgText = await pgDecode(c, name, seqs);
      const misread: string[] = [];
      let accepted = 0;
      seqs.forEach((b, i) => {
        const mine = codec.decode(b);
        if (mine === null) return;
        accepted++;
        if (mine !== pgText[i]) misread.push(b.toString('hex'));
      });
      assert.deepEqual(misread, [], `sequences read unlike PostgreSQL in ${name}`);
      assert.ok(accepted > 60);
    });
  }
});

describe('encoding names and masking', () => {
  test('aliases resolve as PostgreSQL resolves them, any case and punctuation', () => {
    assert.equal(canonicalEncodingName('euc-jp'), 'EUC_JP');
    assert.equal(canonicalEncodingName('Shift_JIS'), 'SJIS');
    assert.equal(canonicalEncodingName('WIN932'), 'SJIS');
    assert.equal(canonicalEncodingName('iso-8859-1'), 'LATIN1');
    assert.equal(canonicalEncodingName('unicode'), 'UTF8');
    assert.equal(canonicalEncodingName('koi8'), 'KOI8R');
    assert.equal(canonicalEncodingName('utf-16'), null);
  });
  test('encodings without a faithful converter have no codec; SQL_ASCII takes the server encoding', () => {
    for (const n of ['BIG5', 'GBK', 'EUC_CN', 'EUC_KR', 'EUC_TW', 'JOHAB', 'EUC_JIS_2004', 'SHIFT_JIS_2004', 'MULE_INTERNAL']) assert.equal(clientCodec(n), null, n);
    assert.equal(clientCodec('SQL_ASCII', 'UTF8')?.utf8, true);
    assert.equal(clientCodec('SQL_ASCII', 'LATIN1')?.name, 'LATIN1');
    assert.equal(clientCodec('SQL_ASCII', 'SQL_ASCII'), null);
  });
  test('every codec reads ASCII bytes as the same code points (COPY FROM skips decoding ASCII fields)', () => {
    const ascii = Buffer.from(Array.from({ length: 128 }, (_, i) => i));
    for (const name of ['UTF8', ...Object.keys(CONVERTERS)]) {
      const codec = clientCodec(name);
      assert.ok(codec, name);
      assert.equal(codec.decode(ascii), ascii.toString('latin1'), name);
      assert.equal(codec.decode(ascii.subarray(48, 60)), '0123456789:;', name);
    }
  });

  test('unrepresentable characters and invalid bytes are null, never replaced', () => {
    const latin1 = clientCodec('LATIN1')!;
    assert.equal(latin1.encode('山田'), null);
    assert.deepEqual(latin1.encode('Müller'), Buffer.from('4dfc6c6c6572', 'hex'));
    const sjis = clientCodec('SJIS')!;
    assert.equal(sjis.decode(Buffer.from([0x83])), null); // a lead byte alone
    assert.equal(sjis.encode('\ufffd'), null);
    assert.equal(clientCodec('UTF8')!.decode(Buffer.from([0xff])), null);
  });
  test('SJIS trail bytes that look like a backslash are masked for byte-level lexing', () => {
    const sql = Buffer.concat([Buffer.from("SELECT E'"), Buffer.from([0x83, 0x5c, 0xb1]) /* ソ, half-width ｱ */, Buffer.from("', x")]);
    const masked = maskMultibyte(sql, 'SJIS');
    assert.deepEqual([...masked.subarray(9, 12)], [0x80, 0x80, 0x80]);
    assert.equal(masked.includes(0x5c), false);
    assert.equal(maskMultibyte(sql, 'EUC_JP'), sql);
    assert.equal(embedsAscii('shift_jis'), true);
    assert.equal(embedsAscii('EUC_JP'), false);
  });
});
