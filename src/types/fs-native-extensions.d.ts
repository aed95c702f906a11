// Types for the parts of fs-native-extensions (hole punching, OFD locks) that we use.
declare module 'fs-native-extensions' {
  /** fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): the range reads as zeroes, space is freed. */
  export function trim(fd: number, offsetBytes: number, lengthBytes: number): Promise<void>;
  export function tryLock(fd: number, offsetBytes?: number, lengthBytes?: number, options?: { shared?: boolean }): boolean;
  export function unlock(fd: number, offsetBytes?: number, lengthBytes?: number): void;
  const fsx: { trim: typeof trim; tryLock: typeof tryLock; unlock: typeof unlock };
  export default fsx;
}
