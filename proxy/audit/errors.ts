// Errors the audit trail raises to its callers.

/**
 * An audit record could not be written and `failMode` is `closed`: the caller must refuse the protected access
 * it was about to allow. The message names the cause (an errno code or a state), never record contents.
 */
export class AuditUnavailableError extends Error {
  override readonly name = 'AuditUnavailableError';
  /** SQLSTATE the proxy should send when refusing for this reason. */
  readonly sqlstate = '58030';
  constructor(
    message: string,
    readonly reason: 'io' | 'buffer_full' | 'sink_lag' | 'closed' | 'locked',
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A short, value-free description of an I/O failure: the errno code if there is one. */
export function ioReason(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : e instanceof Error ? e.name : 'unknown error';
}
