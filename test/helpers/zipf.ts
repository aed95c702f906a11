// A zipf(s) sampler over n items by inverse CDF: item 0's weight 1, item k's 1/(k+1)^s; the items
// are shuffled over the range, so the hot ones are scattered (as a guest's hot blocks are).

/** Returns a function that draws an item in [0, n) with `random` (uniform in [0, 1)). */
export function zipf(n: number, s: number, random: () => number): () => number {
  const weights = Array.from({ length: n }, (_, k) => 1 / Math.pow(k + 1, s));
  const total = weights.reduce((a, b) => a + b, 0);
  const cdf: number[] = [];
  let sum = 0;
  for (const weight of weights) cdf.push((sum += weight / total));
  const places = Array.from({ length: n }, (_, i) => i).sort(() => random() - 0.5);
  return () => {
    const u = random();
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((cdf[mid] ?? 1) < u) lo = mid + 1;
      else hi = mid;
    }
    return places[lo] ?? 0;
  };
}
