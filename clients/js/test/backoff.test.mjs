// Full-jitter backoff: uniform between the minimum and the capped exponential.
import assert from 'node:assert/strict';
import test from 'node:test';
import { backoffDelay, shouldReconnect } from '../dist/starling.mjs';

test('the delay spans [min, min(max, min * 2^attempt)] as random goes from 0 to 1', () => {
  const min = 500, max = 20000;
  for (let attempt = 0; attempt < 12; attempt++) {
    const cap = Math.min(max, min * 2 ** attempt);
    assert.equal(backoffDelay(attempt, min, max, () => 0), min, `attempt ${attempt} low end`);
    assert.equal(backoffDelay(attempt, min, max, () => 0.999999999), Math.max(min, cap - 1), `attempt ${attempt} high end`);
    assert.equal(backoffDelay(attempt, min, max, () => 0.5), Math.floor(min + (cap - min) / 2));
  }
  assert.equal(backoffDelay(0, min, max, () => 0.7), min); // the first delay has no room to jitter
  assert.equal(backoffDelay(2, min, max, () => 0.5), 1250); // 500 + 0.5 * (2000 - 500)
});

test('the cap holds for huge attempt counts (no overflow, no NaN)', () => {
  assert.equal(backoffDelay(5000, 500, 20000, () => 0.999999999), 19999);
  assert.equal(backoffDelay(5000, 500, 20000, () => 0), 500);
});

test('with Math.random every delay stays within the bounds', () => {
  for (let attempt = 0; attempt < 20; attempt++) {
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, 100, 3000);
      assert.ok(d >= 100 && d <= Math.min(3000, 100 * 2 ** attempt), `${d} at attempt ${attempt}`);
    }
  }
});

test('max below min is taken as min; a zero min gives zero', () => {
  assert.equal(backoffDelay(3, 1000, 10, () => 0.9), 1000);
  assert.equal(backoffDelay(3, 0, 1000, () => 0.9), 0);
});

test('close codes: 4000-4499 reconnect, 4500-4999 do not, WebSocket codes as PROTOCOL.md tables them', () => {
  for (const c of [4000, 4002, 4004, 4006, 4499, 1001, 1006, 1011, 1012, 3000]) assert.equal(shouldReconnect(c), true, String(c));
  for (const c of [4500, 4501, 4503, 4504, 4999, 1000, 1002, 1007, 1008, 1009]) assert.equal(shouldReconnect(c), false, String(c));
});
