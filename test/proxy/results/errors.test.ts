import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeNoticeFields, encodeErrorResponse, encodeNoticeResponse } from '../../../proxy/wire/backend.js';
import { BE } from '../../../proxy/wire/types.js';
import { redactServerError } from '../../../proxy/results/index.js';

const cellHex = '\\xff6d0102000000650000000137a1c0';
const unique = {
  S: 'ERROR', V: 'ERROR', C: '23505',
  M: 'duplicate key value violates unique constraint "emp_my_number_key"',
  D: `Key (my_number)=(${cellHex}) already exists.`,
  W: 'SQL statement "insert into emp values (1)"', q: 'insert into emp values (1)', P: '12',
  s: 'public', t: 'emp', n: 'emp_my_number_key',
};

test('an error naming a protected table loses D/W/q/P; SQLSTATE, message and names stay', () => {
  const out = redactServerError(BE.ErrorResponse, encodeErrorResponse(unique).subarray(5), ['public.emp']);
  assert.equal(out[0], BE.ErrorResponse);
  assert.deepEqual(decodeNoticeFields(out.subarray(5)), { S: 'ERROR', V: 'ERROR', C: '23505', M: unique.M, s: 'public', t: 'emp', n: 'emp_my_number_key' });
});

test('without a table list everything is treated as protected; notices too', () => {
  const out = redactServerError(BE.NoticeResponse, encodeNoticeResponse({ ...unique, S: 'NOTICE', V: 'NOTICE' }).subarray(5));
  assert.equal(out[0], BE.NoticeResponse);
  const f = decodeNoticeFields(out.subarray(5), 'NoticeResponse');
  assert.equal(f.D, undefined);
  assert.equal(f.W, undefined);
});

test('cells are cut out of any kept field, whatever the table', () => {
  const e = { S: 'ERROR', C: '22P02', M: `invalid input syntax for type integer: "${cellHex.toUpperCase().replace('\\X', '\\x')}"` };
  const out = decodeNoticeFields(redactServerError(BE.ErrorResponse, encodeErrorResponse(e).subarray(5), ['public.emp']).subarray(5));
  assert.equal(out.M, 'invalid input syntax for type integer: "\\x…"');
});

test('an unrelated error is forwarded as its original bytes', () => {
  const body = encodeErrorResponse({ S: 'ERROR', C: '42P01', M: 'relation "nope" does not exist', P: '15' }).subarray(5);
  assert.deepEqual(redactServerError(BE.ErrorResponse, body, ['public.emp']).subarray(5), body);
  assert.throws(() => redactServerError(BE.DataRow, body), /not an error/);
});
