/**
 * Public types of the client. Kept free of DOM and Node.js types so the declarations
 * compile in either environment.
 */

import type { WssError } from './errors.js';

export type State = 'disconnected' | 'connecting' | 'connected';

/**
 * Error codes the client produces itself (server codes pass through unchanged):
 *
 * - `timeout`: no ack within the send's timeout (which counts time spent in the
 *   offline buffer), or `ready()` ran out of time.
 * - `disconnected`: the send could not be made or its answer cannot come: sent while
 *   offline with `buffer: false`, pending when the connection dropped (the server may
 *   or may not have handled it), or still queued when the client stopped.
 * - `buffer_full`: the offline buffer already holds `maxBufferSize` sends.
 * - `bad_json`: the data could not be serialized (a cycle, a BigInt).
 * - `protocol_error`: the server sent a frame the client cannot understand (only on the
 *   `error` event; the connection stays up).
 * - `transport_error`: the socket failed, or `getToken` threw (only on `error`).
 */
export type ClientErrorCode =
  | 'timeout'
  | 'disconnected'
  | 'buffer_full'
  | 'bad_json'
  | 'protocol_error'
  | 'transport_error';

/** One schema violation of an `invalid_payload` error. */
export interface ErrorDetail {
  /** JSON Pointer into the sent `data`, e.g. `/room`. */
  path: string;
  message: string;
}

/**
 * Why the client left `connected`, is reconnecting, or stopped.
 *
 * Reconnecting (`connecting`): `closed` (the socket closed or failed), `timeout` (no
 * `$welcome` or `$resume` ack in time), `gap` (a room's stream skipped offsets; the
 * resume refills it), `resume_failed` (the server could not resume right now, e.g.
 * `unavailable`), `token_error` (`getToken` threw).
 *
 * Stopped (`disconnected`, the app decides what next): `client` (`disconnect()`),
 * `unauthorized` (the token was refused at the upgrade with HTTP 401), `refused` (close
 * 1008: the pack's `$connect` refused the connection), `resumed_elsewhere` (close 4000:
 * another connection took over this session), `invalid_url`.
 */
export type Reason =
  | 'closed'
  | 'timeout'
  | 'gap'
  | 'resume_failed'
  | 'token_error'
  | 'client'
  | 'unauthorized'
  | 'refused'
  | 'resumed_elsewhere'
  | 'invalid_url';

export interface StateInfo {
  /** Absent on the way to `connected` and on the first `connect()`. */
  reason?: Reason;
  /** The WebSocket close code, when a close caused the change. */
  closeCode?: number;
  /** The close reason or error message, for logs. */
  message?: string;
}

/** The first frame of every connection. */
export interface Welcome {
  conn: string;
  node: string;
  /** Present when the server supports resumable sessions. */
  session?: string;
  /** Seconds the server keeps a closed connection's session for a resume. */
  resume_ttl?: number;
}

/** Where the client stands in one room; kept from `$joined`, deliveries and `$left`. */
export interface RoomPosition {
  /** Only for rooms with history. */
  epoch?: string;
  /**
   * Offset of the last delivery seen (or the `$joined` position). Absent for rooms
   * without history, and after a `$gap` until the next `$joined`.
   */
  offset?: number;
}

export interface JoinedInfo extends RoomPosition {
  room: string;
}

export interface RoomInfo {
  room: string;
}

/** Outcome of a resume for one room the client held. */
export interface ResumedInfo {
  room: string;
  /**
   * `true`: every delivery missed while away has been delivered, in order. `false`:
   * they are lost; reload the room's state. If the room is also gone from
   * `client.rooms`, the connection is no longer a member: join it again.
   */
  recovered: boolean;
  /** How many deliveries the server replayed (when recovered). */
  replayed?: number;
}

export interface ReconnectInfo {
  /** 0 for the first retry after a connection that was up; grows while retries fail. */
  attempt: number;
  /** Milliseconds until the next dial. */
  delay: number;
}

/** What a delivery handler learns besides the data. */
export interface Meta {
  /** The event name as the server sent it. */
  event: string;
  /** For deliveries to a room with history. */
  room?: string;
  offset?: number;
}

/** The client's own events; a pack event with one of these names is only seen by `on("*")`. */
export interface ClientEvents {
  state: (state: State, info: StateInfo) => void;
  welcome: (welcome: Welcome) => void;
  joined: (info: JoinedInfo) => void;
  left: (info: RoomInfo) => void;
  resumed: (info: ResumedInfo) => void;
  gap: (info: RoomInfo) => void;
  reconnect: (info: ReconnectInfo) => void;
  error: (error: WssError) => void;
}

/**
 * The events of a pack, for typed use: what each client event takes and answers, and
 * what each delivery carries. The default accepts every name with `unknown` payloads;
 * a generated map (see README, `wss-types`) narrows it.
 */
export interface EventTypes {
  send: Record<string, { data: unknown; reply: unknown }>;
  receive: Record<string, unknown>;
}

export interface SendOptions {
  /** Milliseconds until the send rejects with `timeout`; default: the client's `timeout`. */
  timeout?: number;
}

/**
 * The part of the WebSocket API the client uses: the browser's and Node.js' global
 * `WebSocket` and the `ws` package all fit.
 */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: 'message', listener: (event: { data: unknown }) => void): void;
  addEventListener(type: 'close', listener: (event: { code: number; reason: string }) => void): void;
  // Browsers pass a plain Event (no message); `ws` passes an ErrorEvent with one.
  addEventListener(type: 'error', listener: (event: object) => void): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** Sent as the `?token=` query parameter of every connection. */
  token?: string;
  /**
   * Awaited before every connection attempt, so an expiring token is refreshed on
   * reconnect. Takes precedence over `token`; `null`/`undefined` connects anonymously.
   */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Default 500 ms. */
  minReconnectDelay?: number;
  /** Default 20 000 ms. */
  maxReconnectDelay?: number;
  /** Default timeout of sends, and of each connection's handshake and resume: 5000 ms. */
  timeout?: number;
  /** Queue sends made while not connected (default `true`); `false` rejects them. */
  buffer?: boolean;
  /** Sends the offline buffer holds before `buffer_full`: default 100. */
  maxBufferSize?: number;
  /** A WebSocket constructor; default the global `WebSocket`. */
  websocket?: WebSocketConstructor;
}
