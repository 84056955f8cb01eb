import type { ErrorDetail } from './types.js';

/**
 * Every failure the client reports: a rejected `send`, a `$error` frame, a transport
 * problem. `code` is a server code (`invalid_payload`, `rate_limited`, a script's own
 * code, ...) or one of the client's own, listed in `ClientErrorCode`.
 */
export class WssError extends Error {
  override readonly name = 'WssError';
  readonly code: string;
  /** For `invalid_payload`: one entry per schema violation. */
  readonly details?: ErrorDetail[];

  constructor(code: string, message: string, details?: ErrorDetail[]) {
    super(message);
    this.code = code;
    if (details) this.details = details;
  }
}
