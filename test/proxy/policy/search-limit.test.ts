// The search limiter on its own: token bucket arithmetic with a fake clock, which statements take a token,
// and the ANY-array cap read from real Bind bodies (text and binary arrays).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { TokenBucket, SearchLimiter, searchedColumn, arrayCapError, binaryArrayLength, textArrayLength } from '../../../proxy/policy/search-limit.js';
import { encodeBind } from '../../../proxy/wire/frontend.js';
import { encodeByteaArray, type ParamPlan } from '../../../proxy/results/params.js';
import type { ProtectedColumn, StatementPlan } from '../../../proxy/sql/types.js';

const col = { schema: 'public', table: 'employees', column: 'my_number' } as ProtectedColumn;

function bindBody(params: (Buffer | null)[], formats: number[]): Buffer {
  // encodeBind gives the whole message; the hooks see the body (after type byte and length).
  return encodeBind({ portal: '', statement: 's', paramFormats: formats, params, resultFormats: [] }).subarray(5);
}

describe('TokenBucket', () => {
  test('starts with burst tokens, refuses when empty, refills at the rate', () => {
    let now = 0;
    const b = new TokenBucket(2, 3, () => now);
    assert.deepEqual([b.take(), b.take(), b.take(), b.take()], [true, true, true, false]);
    now += 499; // 0.998 tokens
    assert.equal(b.take(), false);
    now += 1; // the 499 ms already credited + 1 ms = one token
    assert.equal(b.take(), true);
    assert.equal(b.take(), false);
    now += 10_000; // capped at burst
    assert.equal(b.available(), 3);
  });

  test('a clock going backwards refills nothing', () => {
    let now = 1000;
    const b = new TokenBucket(1, 1, () => now);
    assert.equal(b.take(), true);
    now = 0;
    assert.equal(b.take(), false);
  });

  test('property: over any schedule, tokens taken ≤ burst + rate × elapsed', () => {
    fc.assert(fc.property(
      fc.double({ min: 0.5, max: 200, noNaN: true }), fc.integer({ min: 1, max: 50 }),
      fc.array(fc.integer({ min: 0, max: 300 }), { maxLength: 300 }),
      (rate, burst, gaps) => {
        let now = 0;
        const b = new TokenBucket(rate, burst, () => now);
        let taken = 0;
        for (const g of gaps) {
          now += g;
          if (b.take()) taken++;
        }
        return taken <= burst + (rate * now) / 1000 + 1e-9;
      }), { numRuns: 500 });
  });
});

describe('SearchLimiter', () => {
  const searching = [{ command: 'SELECT', start: 0, end: 1, touched: [{ column: col, uses: ['read', 'search'] }], literals: [], params: [] }] as unknown as StatementPlan[];
  const writing = [{ command: 'INSERT', start: 0, end: 1, touched: [{ column: col, uses: ['write'] }], literals: [], params: [] }] as unknown as StatementPlan[];

  test('only statements with a search use take tokens; the refusal is 53400 naming the column and the limit', () => {
    let now = 0;
    const refused: string[] = [];
    const l = new SearchLimiter({ ratePerSecond: 1, burst: 2, maxInListItems: 100 }, { now: () => now, onRefused: (c) => refused.push(c) });
    assert.equal(searchedColumn(writing), null);
    assert.equal(searchedColumn(searching), col);
    for (let i = 0; i < 10; i++) assert.equal(l.admit(searchedColumn(writing)), null);
    assert.equal(l.admit(searchedColumn(searching)), null);
    assert.equal(l.admit(searchedColumn(searching)), null);
    const e = l.admit(searchedColumn(searching));
    assert.ok(e);
    assert.equal(e.sqlstate, '53400');
    assert.match(e.message, /too many searches on protected column public\.employees\.my_number/);
    assert.match(e.message, /at most 1 times per second \(burst 2\)/);
    assert.deepEqual(refused, ['public.employees.my_number']);
    now += 1000;
    assert.equal(l.admit(searchedColumn(searching)), null);
  });
});

describe('ANY array cap at Bind', () => {
  const plans: ParamPlan[] = [{ index: 2, column: col, purpose: 'search', array: true }];
  const items = (n: number): string[] => Array.from({ length: n }, (_, i) => String(i).padStart(12, '0'));

  test('text arrays: at the cap allowed, one over refused with 54000 naming column, parameter and limit', () => {
    const ok = bindBody([Buffer.from('x'), Buffer.from(`{${items(5).join(',')}}`)], [0]);
    assert.equal(arrayCapError(ok, plans, 5), null);
    const over = bindBody([Buffer.from('x'), Buffer.from(`{${items(6).map((s) => `"${s}"`).join(', ')}}`)], [0]);
    const e = arrayCapError(over, plans, 5);
    assert.ok(e);
    assert.equal(e.sqlstate, '54000');
    assert.equal(e.message, 'column "public.employees.my_number" is protected: an ANY list of 6 values (parameter $2) exceeds the limit of 5');
  });

  test('binary arrays: the count comes from the array header', () => {
    const arr = encodeByteaArray(items(7).map((s) => Buffer.from(s)));
    assert.equal(binaryArrayLength(arr), 7);
    assert.equal(binaryArrayLength(encodeByteaArray([])), 0);
    const body = bindBody([Buffer.from([0, 0, 0, 1]), arr], [0, 1]);
    assert.equal(arrayCapError(body, plans, 7), null);
    assert.equal(arrayCapError(body, plans, 6)?.sqlstate, '54000');
  });

  test('NULL arrays, non-array plans and malformed arrays are left to the encryption pass', () => {
    assert.equal(arrayCapError(bindBody([null, null], [0]), plans, 1), null);
    assert.equal(arrayCapError(bindBody([Buffer.from('a'), Buffer.from('{1,2,3}')], [0]), [{ index: 2, column: col, purpose: 'search' }], 1), null);
    assert.equal(textArrayLength(Buffer.from('{1,{2}}')), null);
    assert.equal(arrayCapError(bindBody([Buffer.from('a'), Buffer.from('not an array')], [0]), plans, 1), null);
  });
});
