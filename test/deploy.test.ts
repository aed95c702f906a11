// What deploy/ ships is checked by the tools that will read it: the systemd units by
// `systemd-analyze verify` (no error and no warning: an unknown or misspelt key is only a
// warning to systemd, and a hardening option that silently does nothing is a hole), their command
// lines against the daemons' own --help (a renamed flag breaks the unit, not just the docs), and
// the libvirt guest by `virt-xml-validate` against libvirt's schema.

import t from 'tap';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import { DAEMON_ENVIRONMENT } from '../src/local/daemon_environment.ts';
import { run, runOk } from './helpers/run.ts';

// Compiled to build/test: the repository is two levels up.
const DEPLOY = fileURLToPath(new URL('../../deploy/', import.meta.url));
const UNITS = [
  { file: 'shoal-mds.service', daemon: 'mds' },
  { file: 'shoal-cs@.service', daemon: 'cs' },
  { file: 'shoal-nbd.service', daemon: 'nbd' },
] as const;

/** ExecStart's command line, continuation lines joined. */
function execStart(unit: string): string {
  const joined = unit.replace(/\\\n\s*/g, ' ');
  const line = joined.split('\n').find((candidate) => candidate.startsWith('ExecStart='));
  return line?.slice('ExecStart='.length) ?? '';
}

t.test('the systemd units pass systemd-analyze verify without a warning', async (t) => {
  // A template is verified as an instance of it, as systemctl would load it.
  const dir = await mkdtemp(join(tmpdir(), 'shoal-units-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const paths: string[] = [];
  for (const { file } of UNITS) {
    const target = join(dir, file.replace('@.', '@sdb.'));
    await copyFile(join(DEPLOY, 'systemd', file), target);
    paths.push(target);
  }
  const result = await run('systemd-analyze', ['verify', '--man=no', ...paths]);
  t.equal(result.code, 0, `exit code 0${result.code === 0 ? '' : `: ${result.stderr}`}`);
  t.equal(result.stderr.trim(), '', 'nothing on stderr (no unknown keys, no missing executables)');
});

t.test('every flag a unit passes is one its daemon takes', async (t) => {
  for (const { file, daemon } of UNITS) {
    const command = execStart(await readFile(join(DEPLOY, 'systemd', file), 'utf8'));
    t.match(command, new RegExp(`shoal\\.js run ${daemon} `), `${file} runs \`shoal run ${daemon}\``);
    const flags = [...new Set(command.match(/--[a-z][a-z-]*/g) ?? [])].filter((flag) => flag !== '--enable-source-maps');
    const { stdout } = await runOk(process.execPath, [SHOAL_ENTRY, 'run', daemon, '--help']);
    const unknown = flags.filter((flag) => !new RegExp(`${flag}(\\s|$)`, 'm').test(stdout));
    t.same(unknown, [], `${file}: ${flags.length} flags, all in \`shoal run ${daemon} --help\``);
  }
});

t.test('every unit runs its daemon with the environment LocalCluster gives it', async (t) => {
  for (const { file } of UNITS) {
    const unit = await readFile(join(DEPLOY, 'systemd', file), 'utf8');
    const assignments = new Map(unit.split('\n').filter((line) => line.startsWith('Environment='))
      .flatMap((line) => line.slice('Environment='.length).split(/\s+/))
      .map((pair) => [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)] as const));
    for (const [name, value] of Object.entries(DAEMON_ENVIRONMENT)) {
      t.equal(assignments.get(name), value, `${file}: ${name}`);
    }
  }
});

t.test('the libvirt guest validates against libvirt\'s domain schema', async (t) => {
  const result = await run('virt-xml-validate', [join(DEPLOY, 'libvirt', 'guest.xml'), 'domain']);
  t.equal(result.code, 0, `virt-xml-validate: ${(result.stdout + result.stderr).trim()}`);
});
