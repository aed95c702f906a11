// Reads one sample from a daemon's Prometheus /metrics: `name` with exactly `labels` (e.g.
// '{state="online"}', or '' for an unlabelled metric).

export async function metricValue(port: number, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const prefix = `${name}${labels} `;
  const line = text.split('\n').find((candidate) => candidate.startsWith(prefix));
  return line === undefined ? NaN : Number(line.slice(prefix.length));
}
