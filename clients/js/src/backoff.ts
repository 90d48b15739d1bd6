/**
 * Reconnect delays: "full jitter" exponential backoff (uniform between the minimum and
 * the capped exponential), so that the clients of a node that went away do not all
 * come back at the same instant.
 */
export function backoffDelay(attempt: number, min: number, max: number, random: () => number = Math.random): number {
  const lo = Math.max(0, min);
  const hi = Math.max(lo, max);
  // 2 ** attempt overflows to Infinity for large attempts; Math.min caps it.
  const cap = Math.min(hi, lo * 2 ** Math.max(0, attempt));
  return Math.floor(lo + random() * (cap - lo));
}
