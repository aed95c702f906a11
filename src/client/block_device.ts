// The block-device contract between the client library and its front ends (the NBD server, the
// benchmark harness, tests). A device is a byte-addressed volume opened under a lease; every
// method checks its range against the device and rejects with a StorageError whose code maps to
// an NBD errno (src/errors.ts).

/** One run of bytes with the same allocation state; `allocated: false` reads as zeroes. */
export interface Extent {
  readonly lengthBytes: number;
  readonly allocated: boolean;
}

export interface BlockDevice {
  readonly name: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;

  /** Reads `lengthBytes` bytes; never-written ranges read as zeroes. */
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;

  /** Writes `data`; resolves only when every replica holds it in stable storage. */
  write(offsetBytes: number, data: Buffer): Promise<void>;

  /**
   * Makes a range read as zeroes, durably. Whole blocks are deallocated (they stop taking space);
   * partial blocks at the edges are written with zeroes.
   */
  zero(offsetBytes: number, lengthBytes: number): Promise<void>;

  /** The guest no longer needs the range: it is deallocated and reads as zeroes afterwards. */
  trim(offsetBytes: number, lengthBytes: number): Promise<void>;

  /** Resolves when every write that completed before the call is stable (it already is). */
  flush(): Promise<void>;

  /**
   * Allocation of the range starting at `offsetBytes`: extents in order, covering at least one byte
   * and at most `lengthBytes`, merged where adjacent extents share a state.
   */
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]>;
}

/** Opens devices by export name; the NBD server calls it on NBD_OPT_GO / NBD_OPT_INFO / LIST. */
export interface BlockDeviceProvider {
  /** Names a client may open (NBD_OPT_LIST). */
  list(): Promise<string[]>;

  /**
   * Opens (or shares an open) device. Rejects with ERR_NOT_FOUND for an unknown name and
   * ERR_VOLUME_LEASED when another writer holds the volume.
   */
  open(name: string, options: { readOnly: boolean }): Promise<BlockDeviceHandle>;
}

/** One user's reference to an open device; the device closes when its last handle is released. */
export interface BlockDeviceHandle {
  readonly device: BlockDevice;
  release(): Promise<void>;
}
