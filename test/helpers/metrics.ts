// Reads samples from a daemon's Prometheus /metrics: `name` with exactly `labels` (e.g.
// '{state="online"}', or '' for an unlabelled metric). Several samples of one scrape: fetch the
// text once (metricsText) and pick from it (sampleOf).

export async function metricsText(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

/** The sample's value in a scrape's text; NaN when it is not there. */
export function sampleOf(text: string, name: string, labels = ''): number {
  const prefix = `${name}${labels} `;
  const line = text.split('\n').find((candidate) => candidate.startsWith(prefix));
  return line === undefined ? NaN : Number(line.slice(prefix.length));
}

export async function metricValue(port: number, name: string, labels = ''): Promise<number> {
  return sampleOf(await metricsText(port), name, labels);
}
