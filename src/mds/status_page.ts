// The MDS's status page (GET /status): one HTML document with its style and script inline, no
// build step and no external asset. The document itself holds no cluster data, so it is served
// without a token; its script asks for the admin token (or takes it from the URL's fragment,
// `/status#token=...`, which browsers never send to the server), keeps it in sessionStorage for
// the tab, and reads the admin API with it every 2 s: health, space per tier, chunk servers,
// volumes with their I/O, and tasks with live progress. Read-only: it calls only GETs.
//
// Text from the cluster (volume names, holders, errors) goes into the page through textContent
// only, never as HTML. A Content-Security-Policy allows exactly this script and style (by hash)
// and requests to this origin.

import { createHash } from 'node:crypto';

const STYLE = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; background: #fff; } th, td { padding: .25em .7em; border-bottom: 1px solid #ddd; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #16752b; } .warn { color: #9a6700; } .bad { color: #b3261e; } .dim { color: #777; }
#health { font-weight: 600; } progress { width: 10em; vertical-align: middle; }
form { margin: 1em 0; } input { width: 32em; font: inherit; }
`;

const SCRIPT = `
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const KEY = 'shoal-admin-token';
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has('token')) {
    sessionStorage.setItem(KEY, fragment.get('token'));
    history.replaceState(null, '', location.pathname);
  }
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === 'className') node.className = value;
      else if (name.startsWith('data-')) node.setAttribute(name, value);
      else node[name] = value;
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }
  const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  function bytes(value) {
    let index = 0;
    while (value >= 1024 && index < UNITS.length - 1) { value /= 1024; index += 1; }
    return (index === 0 ? String(value) : value.toFixed(value >= 100 ? 0 : 1)) + ' ' + UNITS[index];
  }
  const percent = (part, whole) => (whole > 0 ? (100 * part / whole).toFixed(1) + '%' : '-');
  function table(id, headers, rows) {
    const head = el('tr', {}, ...headers.map(([text, num]) => el('th', { className: num ? 'num' : '' }, text)));
    $(id).replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows));
  }
  const cell = (text, className) => el('td', { className: className || '' }, text);
  async function api(path) {
    const reply = await fetch(path, { headers: { authorization: 'Bearer ' + sessionStorage.getItem(KEY) } });
    if (reply.status === 401) throw new Error('the MDS refused the admin token');
    if (!reply.ok) throw new Error(path + ': HTTP ' + reply.status);
    return reply.json();
  }
  function render(stat, volumes, tasks, io) {
    const states = stat.chunks.byState;
    const notHealthy = states.degraded + states.endangered + states.unavailable;
    const health = $('health');
    health.className = states.endangered + states.unavailable > 0 ? 'bad' : notHealthy > 0 || stat.chunkServers.offline > 0 ? 'warn' : 'ok';
    health.textContent = notHealthy === 0
      ? 'OK: ' + stat.chunks.total + ' chunks healthy, ' + stat.chunkServers.online + ' of ' + stat.chunkServers.total + ' chunk servers online'
      : 'WARNING: ' + notHealthy + ' of ' + stat.chunks.total + ' chunks not healthy (' + states.degraded + ' degraded, ' +
        states.endangered + ' endangered, ' + states.unavailable + ' unavailable)';
    const tiers = new Map();
    for (const server of stat.servers) {
      if (server.adminState === 'removed') continue;
      const tier = tiers.get(server.tier) || { capacity: 0, used: 0, servers: 0 };
      tier.capacity += server.capacityBytes; tier.used += server.usedBytes; tier.servers += 1;
      tiers.set(server.tier, tier);
    }
    table('space', [['tier'], ['servers', 1], ['used', 1], ['capacity', 1], ['use', 1]],
      [...tiers].sort((a, b) => a[0] - b[0]).map(([tier, space]) => el('tr', { 'data-tier': tier },
        cell(tier), cell(space.servers, 'num'), cell(bytes(space.used), 'num'), cell(bytes(space.capacity), 'num'), cell(percent(space.used, space.capacity), 'num'))));
    const recovery = stat.recovery;
    $('recovery').textContent = recovery.running + recovery.pending + recovery.blocked === 0 ? 'recovery: idle'
      : 'recovery: ' + recovery.running + ' running, ' + recovery.pending + ' pending, ' + recovery.blocked + ' blocked';
    const serverIo = new Map(io.chunkServers.map((row) => [row.id, row]));
    table('servers', [['id', 1], ['address'], ['tier', 1], ['state'], ['used', 1], ['replicas', 1], ['IOPS', 1]],
      stat.servers.map((server) => {
        const rates = serverIo.get(server.id);
        const state = server.adminState === 'active' ? server.state : server.state + '/' + server.adminState;
        return el('tr', { 'data-server': server.id },
          cell(server.id, 'num'), cell(server.host + ':' + server.port), cell(server.tier, 'num'),
          cell(state, server.state === 'online' ? '' : 'bad'), cell(percent(server.usedBytes, server.capacityBytes), 'num'),
          cell(server.mappedReplicaCount, 'num'), cell(rates ? Math.round(rates.readIops + rates.writeIops) : '-', 'num'));
      }));
    const volumeIo = new Map(io.volumes.map((row) => [row.name, row]));
    table('volumes', [['name'], ['size', 1], ['allocated', 1], ['writer'], ['limits'], ['read IOPS', 1], ['write IOPS', 1]],
      volumes.volumes.map((volume) => {
        const rates = volumeIo.get(volume.name);
        const limits = [volume.qos.iopsLimit > 0 ? volume.qos.iopsLimit + ' IOPS' : '',
          volume.qos.bandwidthLimitBytesPerSecond > 0 ? bytes(volume.qos.bandwidthLimitBytesPerSecond) + '/s' : ''].filter(Boolean).join(', ');
        return el('tr', { 'data-volume': volume.name },
          cell(volume.name), cell(bytes(volume.sizeBytes), 'num'), cell(bytes(volume.allocatedBytes), 'num'),
          cell(volume.lease ? volume.lease.holder : '-', volume.lease ? '' : 'dim'), cell(limits || 'none', limits ? '' : 'dim'),
          cell(rates ? Math.round(rates.readIops) : '-', 'num'), cell(rates ? Math.round(rates.writeIops) : '-', 'num'));
      }));
    table('tasks', [['id', 1], ['kind'], ['target'], ['state'], ['progress'], ['done', 1], ['rate', 1], ['ETA', 1], ['note']],
      tasks.tasks.slice().reverse().slice(0, 50).map((task) => {
        const progress = task.progress;
        const bar = el('progress', { max: Math.max(1, progress.itemsTotal), value: progress.itemsDone });
        const stateClass = task.state === 'failed' ? 'bad' : task.state === 'cancelled' || task.state === 'paused' ? 'warn' : task.state === 'done' ? 'ok' : '';
        return el('tr', { 'data-task': task.id, 'data-state': task.state },
          cell(task.id, 'num'), cell(task.kind), cell(task.target.chunkServerId !== undefined ? 'chunk server ' + task.target.chunkServerId
            : task.target.volumeId !== undefined ? 'volume ' + (task.target.volume ?? task.target.volumeId) : 'all chunk servers'), cell(task.state, stateClass),
          el('td', {}, bar), el('td', { className: 'num progress-text' }, progress.itemsDone + '/' + progress.itemsTotal),
          cell(task.bytesPerSecond === null ? '-' : bytes(Math.round(task.bytesPerSecond)) + '/s', 'num'),
          cell(task.etaSeconds === null ? '-' : task.etaSeconds + ' s', 'num'), cell(task.note || task.error || ''));
      }));
  }
  async function refresh() {
    if (!sessionStorage.getItem(KEY)) {
      $('login').hidden = false; $('status').hidden = true;
      return;
    }
    try {
      const [stat, volumes, tasks, io] = await Promise.all([api('/v1/stat'), api('/v1/volumes'), api('/v1/tasks'), api('/v1/io')]);
      render(stat, volumes, tasks, io);
      $('login').hidden = true; $('status').hidden = false;
      $('problem').textContent = '';
      $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    } catch (error) {
      $('problem').textContent = String(error.message || error);
      if (String(error.message).includes('refused the admin token')) { sessionStorage.removeItem(KEY); $('login').hidden = false; }
    }
  }
  $('login').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $('token').value.trim());
    refresh();
  });
  refresh();
  setInterval(refresh, 2000);
})();
`;

const sha256 = (text: string): string => `'sha256-${createHash('sha256').update(text).digest('base64')}'`;

/** Only this page's own script and style, and requests to the MDS that served it. */
export const STATUS_PAGE_CSP = [
  "default-src 'none'", `script-src ${sha256(SCRIPT)}`, `style-src ${sha256(STYLE)}`, "connect-src 'self'",
  "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
].join('; ');

export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>shoal status</title>
<style>${STYLE}</style>
</head>
<body>
<h1>shoal cluster status</h1>
<div class="dim"><span id="updated">loading</span> <span id="problem" class="bad"></span></div>
<form id="login" hidden>
  <label>Admin token (kept in this tab only): <input id="token" type="password" autocomplete="off"></label>
  <button type="submit">Show</button>
</form>
<div id="status" hidden>
<p id="health"></p>
<p id="recovery"></p>
<h2>Space per tier</h2><table id="space"></table>
<h2>Chunk servers</h2><table id="servers"></table>
<h2>Volumes</h2><table id="volumes"></table>
<h2>Tasks</h2><table id="tasks"></table>
</div>
<script>${SCRIPT}</script>
</body>
</html>
`;
