/** Errors and codes: the server's (docs/PROTOCOL.md, "Codes") and the client's own. */

/** Reply error codes sent by the server (100-199). */
export const ServerErrors = {
  INTERNAL: 100,
  UNAUTHORIZED: 101,
  UNKNOWN_CHANNEL: 102,
  PERMISSION_DENIED: 103,
  METHOD_NOT_FOUND: 104,
  ALREADY_SUBSCRIBED: 105,
  LIMIT_EXCEEDED: 106,
  BAD_REQUEST: 107,
  NOT_AVAILABLE: 108,
  TOKEN_EXPIRED: 109,
  MESSAGE_TOO_LARGE: 110,
  NOT_SUBSCRIBED: 111,
  UNRECOVERABLE_POSITION: 112,
  ALREADY_CONNECTED: 113,
  TOO_MANY_REQUESTS: 114,
  CHANNEL_LIMIT: 115,
  SERVER_BUSY: 116,
} as const;

/**
 * Errors raised by the client itself; they stay below 100 so they never collide with
 * a server code.
 */
export const ClientErrors = {
  /** No reply within `timeout`. */
  TIMEOUT: 1,
  /** The connection closed before the reply came (the command may or may not have run). */
  DISCONNECTED: 2,
  /** `disconnect()` was called, or the client stopped for good (e.g. unauthorized). */
  CLIENT_CLOSED: 3,
  /** A publish while not connected, with `offlinePublish: 'refuse'`. */
  NOT_CONNECTED: 4,
  /** A publish while not connected, with the offline queue full. */
  QUEUE_FULL: 5,
  /** The subscription was unsubscribed while the call waited for it. */
  UNSUBSCRIBED: 6,
  /** `getToken` threw an UnauthorizedError (or returned an empty token). */
  UNAUTHORIZED: 7,
  /** A frame from the server could not be decoded. */
  BAD_FRAME: 8,
} as const;

/** Close / disconnect codes (WebSocket close code and `disconnect.code`). */
export const DisconnectCodes = {
  /** Client-side: `disconnect()` was called. */
  DISCONNECT_CALLED: 0,
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  SHUTDOWN: 4000,
  NO_PONG: 4003,
  EXPIRED: 4004,
  BAD_REQUEST: 4500,
  UNAUTHORIZED: 4501,
  CONNECT_REQUIRED: 4502,
  DISCONNECTED_BY_API: 4503,
  FORBIDDEN: 4504,
} as const;

const TEMPORARY_SERVER_CODES: readonly number[] = [100, 114, 115, 116];
const UNAUTHORIZED_CODES: readonly number[] = [101, 103, 4501, ClientErrors.UNAUTHORIZED];

/** An error from the server (a reply's `error`) or from the client (codes below 100). */
export class StarlingError extends Error {
  readonly code: number;
  /** The same call may succeed if retried later (server `temporary`, timeouts, disconnects). */
  readonly temporary: boolean;

  constructor(code: number, message: string, temporary?: boolean) {
    super(message);
    this.name = 'StarlingError';
    this.code = code;
    this.temporary =
      temporary ??
      (TEMPORARY_SERVER_CODES.includes(code) || code === ClientErrors.TIMEOUT || code === ClientErrors.DISCONNECTED);
  }

  /** Refused for lack of rights (101, 103, 4501, or getToken said so): retrying will not help. */
  get unauthorized(): boolean {
    return UNAUTHORIZED_CODES.includes(this.code);
  }
}

/**
 * Thrown by an application's `getToken` to say the user may not connect (or subscribe):
 * the client then stops instead of retrying. Any other error from `getToken` is taken as
 * temporary and retried with backoff.
 */
export class UnauthorizedError extends Error {
  constructor(message = 'unauthorized') {
    super(message);
    this.name = 'UnauthorizedError';
  }
}

/**
 * Whether a close code means "reconnect" (docs/PROTOCOL.md, "Codes"): 4000-4499 yes,
 * 4500-4999 no, the WebSocket codes as tabled there, any other unknown code yes.
 */
export function shouldReconnect(code: number): boolean {
  if (code >= 4000 && code <= 4499) return true;
  if (code >= 4500 && code <= 4999) return false;
  return ![1000, 1002, 1007, 1008, 1009].includes(code);
}
