/**
 * Full-jitter exponential backoff: a delay drawn uniformly from
 * [0, min(max, min * 2^attempt)] milliseconds.
 *
 * Full jitter (rather than "exponential plus a little noise") is what spreads a fleet of
 * clients that all lost the same server at the same instant: without it they come back
 * in synchronized waves, each one a thundering herd. Attempt 0 is the first retry after
 * a connection that was up, so it may be immediate.
 *
 * `random` is injectable so tests can pin both ends of the range.
 */
export function backoff(
  attempt: number,
  min: number,
  max: number,
  random: () => number = Math.random,
): number {
  // 2^31 * min already exceeds any sane max; clamping keeps the product finite.
  const cap = Math.min(max, min * 2 ** Math.min(Math.max(attempt, 0), 31));
  return Math.floor(random() * (cap + 1));
}
