// What an open volume holds from the MDS, kept alive: the write lease, renewed every
// `renewIntervalMs` the MDS gave with it, and the capability chunk servers serve the volume on,
// replaced a third of the way through its life (so an MDS away for a while, restarting, does not
// stop I/O) and retried every second while the MDS does not answer.
//
// Once the lease is lost it stays lost: the MDS said it is gone (taken over, the volume deleted,
// this hypervisor revoked; LEASE_LOST in retry.ts) or a chunk server refused a change as fenced.
// Writes then fail with that error, and closing does not release what is no longer held.
//
// The volume's I/O limits ride along: each lease renewal's answer carries them, and a read-only
// open (no lease) asks for them every QOS_REFRESH_MS, so an admin's change reaches the gate
// (qos_gate.ts) within seconds without the guest reconnecting.
//
// The timers run on injected Timers, so tests drive renewals without waiting.

import type { StorageError } from '../errors.ts';
import type { CapabilityReply, LeaseGrant, VolumeQos } from '../protocol/api.ts';
import { decodeCapability, type Capability, type CapabilityGrant } from '../protocol/capability.ts';
import type { MdsClient } from '../protocol/mds_client.ts';
import { assert } from '../util/assert.ts';
import type { Timers } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import { losesLease } from './retry.ts';

/**
 * A write open's read cache answers only while the MDS confirmed its lease within this many
 * renewal intervals (counted from when the confirming request was sent); whoever takes the lease
 * from it writes nothing for that long (the MDS says so: LeaseGrant.holdWritesMs).
 */
export const CACHE_TRUST_RENEWALS = 1.5;

/** A capability is renewed once this share of its lifetime has passed. */
export const CAPABILITY_RENEW_AT = 1 / 3;
/** The wait before asking again after a renewal failed, and the shortest wait before any renewal. */
export const CAPABILITY_RETRY_MS = 1_000;
/** How often a read-only open asks for its volume's limits (a write open gets them with each renewal). */
export const QOS_REFRESH_MS = 5_000;

/** When to renew a capability just received: a third of its lifetime from now, never sooner than the retry wait. */
export function capabilityRenewDelayMs(capability: Capability): number {
  return Math.max(CAPABILITY_RETRY_MS, Math.floor((capability.expiresAtMs - capability.issuedAtMs) * CAPABILITY_RENEW_AT));
}

export function capabilityGrant(reply: CapabilityReply): CapabilityGrant {
  const encoded = Buffer.from(reply.capability, 'hex');
  return { capability: decodeCapability(encoded), encoded, sessionKey: Buffer.from(reply.sessionKey, 'hex') };
}

export interface LeaseKeeperOptions {
  readonly volumeName: string;
  /** Null for a read-only open: only the capability is kept. */
  readonly lease: LeaseGrant | null;
  /** The capability that came with the open. */
  readonly grant: CapabilityGrant;
  readonly mds: Pick<MdsClient, 'renewLease' | 'capability' | 'closeVolume' | 'volumeQos'>;
  readonly log: Logger;
  readonly timers: Timers;
  /** Called with the volume's limits as the MDS states them, after each renewal or refresh. */
  readonly onQos?: (qos: VolumeQos) => void;
  /** When the open that brought the lease was sent (performance.now()): the lease is confirmed as of then. */
  readonly openedAtMs?: number;
}

export class LeaseKeeper {
  private readonly options: LeaseKeeperOptions;
  private readonly lease: LeaseGrant | null;
  private grant_: CapabilityGrant;
  private lost_: StorageError | null = null;
  /** When the MDS last confirmed the lease (the open, then each renewal), on performance.now(). */
  private confirmedAtMs: number;
  private stopped = false;
  private cancelLeaseRenewal: (() => void) | null = null;
  private cancelCapabilityRenewal: (() => void) | null = null;
  private cancelQosRefresh: (() => void) | null = null;

  constructor(options: LeaseKeeperOptions) {
    this.options = options;
    this.lease = options.lease;
    this.grant_ = options.grant;
    this.confirmedAtMs = options.openedAtMs ?? performance.now();
  }

  /** Starts the renewals (once). */
  start(): void {
    assert(this.cancelCapabilityRenewal === null && !this.stopped, 'renewals start once, before stop');
    if (this.lease !== null) this.scheduleLeaseRenewal(this.lease);
    else this.scheduleQosRefresh();
    this.scheduleCapabilityRenewal();
  }

  /** What chunk servers serve this volume on; replaced before it expires. */
  get grant(): CapabilityGrant {
    return this.grant_;
  }

  /** The lease's epoch, which writes carry; 0 without a lease. */
  get epoch(): number {
    return this.lease?.epoch ?? 0;
  }

  /**
   * The MDS confirmed the write lease within CACHE_TRUST_RENEWALS renewal intervals: a host that
   * took it over since then writes nothing yet (a cache may answer for the volume).
   */
  confirmedLately(): boolean {
    return this.lease !== null && this.lost_ === null && performance.now() - this.confirmedAtMs <= CACHE_TRUST_RENEWALS * this.lease.renewIntervalMs;
  }

  /** Why the lease is gone, or null while it is held (or there is none). */
  get lost(): StorageError | null {
    return this.lost_;
  }

  leaseId(): string {
    assert(this.lease !== null, 'writes happen under a lease');
    return this.lease.leaseId;
  }

  /** Records that the lease is gone (the first reason is kept); returns the error to throw. */
  lose(error: StorageError): StorageError {
    if (this.lost_ === null) {
      this.lost_ = error;
      this.options.log.error('write lease lost (taken over, or this hypervisor was revoked): writes fail',
        { volume: this.options.volumeName, message: error.message });
    }
    return error;
  }

  /** A chunk server's refusal as fenced means the lease was superseded; other errors pass through. */
  noteFenced(error: StorageError): StorageError {
    return error.code === 'ERR_LEASE_FENCED' ? this.lose(error) : error;
  }

  /** Stops the renewals and releases the lease if it is still held; a release that fails is left to expire. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.cancelLeaseRenewal?.();
    this.cancelCapabilityRenewal?.();
    this.cancelQosRefresh?.();
    if (this.lease !== null && this.lost_ === null) {
      await this.options.mds.closeVolume(this.options.volumeName, this.lease.leaseId).catch((error: unknown) => {
        this.options.log.warn('could not release the lease; it will expire', { volume: this.options.volumeName, error });
      });
    }
  }

  /** Renews every interval whether or not the last renewal answered, until the lease is lost or stopped. */
  private scheduleLeaseRenewal(lease: LeaseGrant): void {
    this.cancelLeaseRenewal = this.options.timers.background(lease.renewIntervalMs, () => {
      if (this.stopped) return;
      this.scheduleLeaseRenewal(lease);
      const sentAtMs = performance.now();
      this.options.mds.renewLease(this.options.volumeName, lease.leaseId).then((reply) => {
        // From when it was sent: the MDS confirmed the lease at some moment after that.
        this.confirmedAtMs = Math.max(this.confirmedAtMs, sentAtMs);
        this.applyQos(reply.qos);
      }, (error: unknown) => {
        if (losesLease('leaseRenewal', error)) {
          this.lose(error);
          this.cancelLeaseRenewal?.();
          return;
        }
        this.options.log.warn('lease renewal failed; retrying', { volume: this.options.volumeName, error });
      });
    });
  }

  /** Hands limits from the MDS on; an MDS older than limits sends none, and nothing here may throw into a timer. */
  private applyQos(qos: VolumeQos | undefined): void {
    if (this.stopped || qos === undefined || this.options.onQos === undefined) return;
    try {
      this.options.onQos(qos);
    } catch (error) {
      this.options.log.error('could not apply the volume\'s I/O limits; the ones in force stay', { volume: this.options.volumeName, error });
    }
  }

  /** A read-only open's limits: asked for every QOS_REFRESH_MS; a failure keeps the limits in force. */
  private scheduleQosRefresh(): void {
    if (this.options.onQos === undefined || this.stopped) return;
    this.cancelQosRefresh = this.options.timers.background(QOS_REFRESH_MS, () => {
      if (this.stopped) return;
      this.options.mds.volumeQos(this.options.volumeName).then((qos) => {
        this.applyQos(qos);
      }, (error: unknown) => {
        this.options.log.warn('could not refresh the volume\'s I/O limits; the ones in force stay', { volume: this.options.volumeName, error });
      }).finally(() => this.scheduleQosRefresh());
    });
  }

  private scheduleCapabilityRenewal(delayMs: number = capabilityRenewDelayMs(this.grant_.capability)): void {
    if (this.stopped) return;
    this.cancelCapabilityRenewal = this.options.timers.background(delayMs, () => {
      const leaseId = this.lease === null ? undefined : this.lease.leaseId;
      this.options.mds.capability(this.options.volumeName, leaseId).then((reply) => {
        this.grant_ = capabilityGrant(reply);
        this.scheduleCapabilityRenewal();
      }, (error: unknown) => {
        if (losesLease('capabilityRenewal', error)) {
          // Nothing to renew any more.
          this.lose(error);
          return;
        }
        this.options.log.warn('capability renewal failed; retrying', { volume: this.options.volumeName, error });
        this.scheduleCapabilityRenewal(CAPABILITY_RETRY_MS);
      });
    });
  }
}

