/**
 * @wss-engine/client: the official client of wss-engine.
 *
 * `client.ts` holds the connection state machine, resume and the offline buffer;
 * `backoff.ts` the reconnect delay; `types.ts` every public type.
 */
export { WssClient } from './client.js';
export { WssError } from './errors.js';
export { backoff } from './backoff.js';
export type {
  ClientErrorCode,
  ClientEvents,
  ClientOptions,
  ErrorDetail,
  EventTypes,
  JoinedInfo,
  Meta,
  Reason,
  ReconnectInfo,
  ResumedInfo,
  RoomInfo,
  RoomPosition,
  SendOptions,
  State,
  StateInfo,
  WebSocketConstructor,
  WebSocketLike,
  Welcome,
} from './types.js';
