// An NBD server of a LocalCluster run as another hypervisor would run its own: its own name, unix
// socket and arguments (--holder, --host, --force-open, --cache-dir ...), next to the cluster's
// own `cluster.nbd` or instead of it. It can be killed and started again with the same arguments
// (the same socket, holder and cache directory), as a hypervisor's service manager would.

import { join } from 'node:path';
import type { LocalCluster } from '../../src/local/cluster.ts';
import { DaemonProcess } from '../../src/local/daemon_process.ts';

export class NbdServer {
  readonly name: string;
  /** The unix socket it serves on (in the cluster's folder, named after it). */
  readonly socket: string;
  private readonly cluster: LocalCluster;
  private readonly args: readonly string[];
  private daemon_: DaemonProcess | null = null;

  private constructor(cluster: LocalCluster, name: string, args: readonly string[]) {
    this.cluster = cluster;
    this.name = name;
    this.args = args;
    this.socket = join(cluster.dir, `${name}.sock`);
  }

  /** Starts `shoal run nbd` on the cluster's MDS with the local hypervisor's credential and `args`. */
  static async start(cluster: LocalCluster, name: string, args: readonly string[]): Promise<NbdServer> {
    const server = new NbdServer(cluster, name, args);
    await server.restart();
    return server;
  }

  /** The daemon now running (the last one started). */
  get daemon(): DaemonProcess {
    if (this.daemon_ === null) throw new Error(`NBD server ${this.name} was never started`);
    return this.daemon_;
  }

  get metricsPort(): number {
    return Number(this.daemon.ready['metricsPort']);
  }

  uri(volume: string): string {
    return `nbd+unix:///${volume}?socket=${this.socket}`;
  }

  /** Starts it (again) with the same arguments; a running one is stopped first. */
  async restart(): Promise<DaemonProcess> {
    await this.daemon_?.stop('SIGTERM');
    this.daemon_ = await DaemonProcess.start({
      name: this.name,
      stderr: 'collect',
      args: ['run', 'nbd', '--mds', this.cluster.mdsUrl, '--credential', this.cluster.hypervisorCredentialPath, '--socket', this.socket, ...this.args],
    });
    return this.daemon_;
  }

  /** Stops it with `signal` (SIGKILL: as a crash) and waits for it to exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.daemon_?.stop(signal);
  }
}
