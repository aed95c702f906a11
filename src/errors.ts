// The one registry of operating errors: every failure a caller can act on has a stable code, an
// HTTP status for the REST API and an errno for NBD replies. Programmer errors are not here: they
// are assertion failures and crash the process (see `assert` in src/util/assert.ts).
//
// An error crosses process boundaries as `{ code, message }` (CS frames, REST bodies) and is
// rebuilt on the other side with `StorageError.fromWire`, so both ends share these definitions.

export const NBD_ERRNO = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type NbdErrno = (typeof NBD_ERRNO)[keyof typeof NBD_ERRNO];

interface ErrorDefinition {
  readonly httpStatus: number;
  readonly nbdErrno: NbdErrno;
  readonly summary: string;
}

export const ERRORS = {
  ERR_INVALID_ARGUMENT: { httpStatus: 400, nbdErrno: NBD_ERRNO.EINVAL, summary: 'a request field is invalid' },
  ERR_OUT_OF_RANGE: { httpStatus: 400, nbdErrno: NBD_ERRNO.EINVAL, summary: 'offset or length outside the device or chunk' },
  ERR_TOO_LARGE: { httpStatus: 413, nbdErrno: NBD_ERRNO.EOVERFLOW, summary: 'request larger than the limit' },
  ERR_PROTOCOL: { httpStatus: 400, nbdErrno: NBD_ERRNO.EINVAL, summary: 'malformed frame or message' },
  ERR_FRAME_TOO_LARGE: { httpStatus: 413, nbdErrno: NBD_ERRNO.EOVERFLOW, summary: 'frame larger than the limit' },
  ERR_UNAUTHORIZED: { httpStatus: 401, nbdErrno: NBD_ERRNO.EPERM, summary: 'missing or wrong credentials' },
  ERR_NOT_FOUND: { httpStatus: 404, nbdErrno: NBD_ERRNO.EINVAL, summary: 'no such object' },
  ERR_VOLUME_EXISTS: { httpStatus: 409, nbdErrno: NBD_ERRNO.EINVAL, summary: 'a volume with this name exists' },
  ERR_SHRINK_REFUSED: { httpStatus: 409, nbdErrno: NBD_ERRNO.EINVAL, summary: 'volumes only grow' },
  ERR_CONFLICT: { httpStatus: 409, nbdErrno: NBD_ERRNO.EINVAL, summary: 'the object is not in a state that allows this' },
  ERR_TASK_CONFLICT: { httpStatus: 409, nbdErrno: NBD_ERRNO.EINVAL, summary: 'a running task works on the same target' },
  ERR_VOLUME_LEASED: { httpStatus: 409, nbdErrno: NBD_ERRNO.EPERM, summary: 'another client holds the write lease' },
  ERR_LEASE_FENCED: { httpStatus: 409, nbdErrno: NBD_ERRNO.EIO, summary: 'the lease epoch was superseded' },
  ERR_LEASE_EXPIRED: { httpStatus: 409, nbdErrno: NBD_ERRNO.EIO, summary: 'the lease is no longer held' },
  ERR_READ_ONLY: { httpStatus: 403, nbdErrno: NBD_ERRNO.EPERM, summary: 'opened read-only' },
  ERR_CHUNK_NOT_FOUND: { httpStatus: 404, nbdErrno: NBD_ERRNO.EIO, summary: 'chunk replica not on this server' },
  ERR_CHUNK_VERSION: { httpStatus: 409, nbdErrno: NBD_ERRNO.EIO, summary: 'chunk replica version differs' },
  ERR_CHECKSUM: { httpStatus: 500, nbdErrno: NBD_ERRNO.EIO, summary: 'stored block failed its checksum' },
  ERR_NO_SPACE: { httpStatus: 507, nbdErrno: NBD_ERRNO.ENOSPC, summary: 'no space left' },
  ERR_NOT_ENOUGH_SERVERS: { httpStatus: 503, nbdErrno: NBD_ERRNO.EIO, summary: 'too few chunk servers in distinct failure domains' },
  ERR_IO: { httpStatus: 500, nbdErrno: NBD_ERRNO.EIO, summary: 'disk I/O error' },
  ERR_UNAVAILABLE: { httpStatus: 503, nbdErrno: NBD_ERRNO.EIO, summary: 'a server is unreachable' },
  ERR_TIMEOUT: { httpStatus: 504, nbdErrno: NBD_ERRNO.EIO, summary: 'an operation timed out' },
  ERR_SHUTTING_DOWN: { httpStatus: 503, nbdErrno: NBD_ERRNO.ESHUTDOWN, summary: 'the server is stopping' },
  ERR_DATA_DIR_LOCKED: { httpStatus: 500, nbdErrno: NBD_ERRNO.EIO, summary: 'data directory in use by another process' },
  ERR_JOURNAL_OWNER: { httpStatus: 500, nbdErrno: NBD_ERRNO.EIO, summary: 'the journal directory holds another disk\'s journal' },
  ERR_JOURNAL_LOST: { httpStatus: 500, nbdErrno: NBD_ERRNO.EIO, summary: 'the journal of a chunk server that did not stop cleanly is lost' },
  ERR_CONFIG: { httpStatus: 400, nbdErrno: NBD_ERRNO.EINVAL, summary: 'invalid configuration' },
  ERR_INTERNAL: { httpStatus: 500, nbdErrno: NBD_ERRNO.EIO, summary: 'internal error' },
} as const satisfies Record<string, ErrorDefinition>;

export type ErrorCode = keyof typeof ERRORS;

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERRORS, value);
}

/** An operating error: a value with a stable code and a message a human can act on. */
export class StorageError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StorageError';
    this.code = code;
  }

  get httpStatus(): number {
    return ERRORS[this.code].httpStatus;
  }

  get nbdErrno(): NbdErrno {
    return ERRORS[this.code].nbdErrno;
  }

  toWire(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }

  /** Rebuilds an error received from a peer; an unknown code becomes ERR_INTERNAL, keeping the text. */
  static fromWire(code: unknown, message: unknown): StorageError {
    const text = typeof message === 'string' ? message : 'no message';
    if (isErrorCode(code)) return new StorageError(code, text);
    return new StorageError('ERR_INTERNAL', `peer sent unknown error code ${String(code)}: ${text}`);
  }
}

export function fail(code: ErrorCode, message: string, cause?: unknown): never {
  throw new StorageError(code, message, cause === undefined ? undefined : { cause });
}

export function isStorageError(error: unknown, code?: ErrorCode): error is StorageError {
  return error instanceof StorageError && (code === undefined || error.code === code);
}

const ERRNO_CODES: Record<string, ErrorCode> = {
  ENOSPC: 'ERR_NO_SPACE',
  EDQUOT: 'ERR_NO_SPACE',
  EIO: 'ERR_IO',
  EROFS: 'ERR_IO',
};

/**
 * Turns an error from the operating system into an operating error, so that ENOSPC and EIO travel
 * to the caller as codes. Programmer errors (TypeError, RangeError, assertion failures) are
 * rethrown unchanged: they must crash, not be reported as I/O errors.
 */
export function fromSystemError(error: unknown, context: string): StorageError {
  if (error instanceof StorageError) return error;
  if (error instanceof TypeError || error instanceof RangeError || error instanceof ReferenceError) {
    throw error;
  }
  if (error instanceof Error && error.name === 'AssertionError') throw error;
  const errno = (error as NodeJS.ErrnoException | undefined)?.code;
  const code = (errno !== undefined ? ERRNO_CODES[errno] : undefined) ?? 'ERR_IO';
  const detail = error instanceof Error ? error.message : String(error);
  return new StorageError(code, `${context}: ${detail}`, { cause: error });
}
