/**
 * WssClient: one WebSocket at a time, driven by an explicit state machine.
 *
 * ```text
 *                connect()                   $welcome [, $resume ack]
 *   disconnected ---------> connecting -------------------------------> connected
 *        ^                   |    ^                                        |
 *        |                   |    +---- socket lost: dial again (next -----+
 *        |                   |          URL) after a backoff delay
 *        +-------------------+--------------------------------------------+
 *            disconnect(), HTTP 401 at the upgrade, close 1008 or 4000
 * ```
 *
 * One attempt inside `connecting`: await `getToken` → open the socket → wait for
 * `$welcome` → when rooms are held from an earlier connection, send `$resume` (the
 * first frame) and wait for its ack. Only then is the client `connected`, so queued
 * sends leave after the rooms are back, in the order they were made. One timer
 * (`timeout`) covers an attempt up to the welcome: a server that accepts TCP but never
 * answers cannot stall the client.
 */
import { backoff } from './backoff.js';
import { WssError } from './errors.js';
import type {
  ClientEvents,
  ClientOptions,
  ErrorDetail,
  EventTypes,
  Meta,
  Reason,
  ResumedInfo,
  RoomPosition,
  SendOptions,
  State,
  StateInfo,
  WebSocketConstructor,
  WebSocketLike,
  Welcome,
} from './types.js';

/** A send: queued while offline, then written and waiting for its ack. */
interface Call {
  id: string;
  frame: string;
  ok: (data: unknown) => void;
  fail: (error: WssError) => void;
  timer?: ReturnType<typeof setTimeout>;
}

type Fn = (a?: unknown, b?: unknown) => void;
type Obj = Record<string, unknown>;

/** Names `on()` reserves for the client's own events (see `ClientEvents`). */
const RESERVED = new Set(['state', 'welcome', 'joined', 'left', 'resumed', 'gap', 'reconnect', 'error', '*']);

/**
 * Resume failures worth another attempt on a new connection; any other error means the
 * session cannot be resumed (expired, or a server without `$resume`).
 */
const TRANSIENT = ['timeout', 'unavailable', 'conflict', 'rate_limited'];

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function toError(e: unknown): WssError {
  if (!isObj(e) || typeof e.code !== 'string') return new WssError('protocol_error', 'malformed error from the server');
  return new WssError(
    e.code,
    typeof e.message === 'string' ? e.message : e.code,
    Array.isArray(e.details) ? (e.details as ErrorDetail[]) : undefined,
  );
}

export class WssClient<T extends EventTypes = EventTypes> {
  readonly #urls: string[];
  readonly #Ws: WebSocketConstructor;
  readonly #token: string | undefined;
  readonly #getToken: ClientOptions['getToken'];
  readonly #min: number;
  readonly #max: number;
  readonly #timeout: number;
  readonly #buffer: boolean;
  readonly #maxBuffer: number;

  #state: State = 'disconnected';
  #ws: WebSocketLike | null = null;
  #listeners = new Map<string, Set<Fn>>();
  #rooms = new Map<string, RoomPosition>();
  /** Written, waiting for an ack; rejected with `disconnected` when the socket goes. */
  #calls = new Map<string, Call>();
  /** Not written yet (offline buffer); survives reconnects. */
  #queue: Call[] = [];
  #ids = 0;
  #attempt = 0;
  /** Index into #urls of the current attempt; each dial moves to the next URL. */
  #url = -1;
  /** The attempt timer (handshake) or the reconnect timer: never both at once. */
  #timer?: ReturnType<typeof setTimeout>;
  /**
   * Bumped whenever the current attempt is abandoned, so a `getToken` that answers
   * late cannot open a second socket beside the one a newer attempt owns.
   */
  #epoch = 0;
  /** The current attempt's upgrade was refused with HTTP 401. */
  #refused = false;
  #welcomed = false;
  /**
   * The session to present in `$resume`. It stays the old one until a resume has been
   * answered: a connection that drops mid-resume has restored nothing, and its own
   * session holds no rooms worth resuming.
   */
  #session: string | undefined;
  /** Rooms re-announced by `$joined` during the pending resume. */
  #restored: Set<string> | null = null;

  constructor(urlOrUrls: string | string[], options: ClientOptions = {}) {
    this.#urls = typeof urlOrUrls === 'string' ? [urlOrUrls] : [...urlOrUrls];
    if (!this.#urls.length) throw new TypeError('WssClient needs at least one URL');
    const Ws = options.websocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ws) {
      throw new TypeError('no global WebSocket here: pass a constructor as the `websocket` option (e.g. from the ws package)');
    }
    this.#Ws = Ws;
    this.#token = options.token;
    this.#getToken = options.getToken;
    this.#min = options.minReconnectDelay ?? 500;
    this.#max = options.maxReconnectDelay ?? 20000;
    this.#timeout = options.timeout ?? 5000;
    this.#buffer = options.buffer ?? true;
    this.#maxBuffer = options.maxBufferSize ?? 100;
  }

  get state(): State {
    return this.#state;
  }

  /** Rooms this connection is in, with their positions; kept from `$joined`/`$left`. */
  get rooms(): ReadonlyMap<string, Readonly<RoomPosition>> {
    return this.#rooms;
  }

  connect(): void {
    if (this.#state !== 'disconnected') return;
    this.#attempt = 0;
    this.#set('connecting', {});
    void this.#dial();
  }

  /**
   * Close and stay closed. Rooms and the session are kept: a later `connect()` resumes
   * them, as after any drop (within the server's `resume_ttl`).
   */
  disconnect(): void {
    if (this.#state !== 'disconnected') this.#stop({ reason: 'client' });
  }

  /**
   * Resolves once connected. Rejects with `disconnected` if the client is or becomes
   * stopped, with `timeout` after `timeoutMs` (no limit when absent).
   */
  ready(timeoutMs?: number): Promise<void> {
    if (this.#state === 'connected') return Promise.resolve();
    if (this.#state === 'disconnected') return Promise.reject(new WssError('disconnected', 'not connecting: call connect()'));
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const off = this.on('state', (state, info) => {
        if (state === 'connecting') return;
        off();
        clearTimeout(timer);
        if (state === 'connected') resolve();
        else reject(new WssError('disconnected', `stopped: ${info.reason}${info.message ? ` (${info.message})` : ''}`));
      });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          off();
          reject(new WssError('timeout', `not connected within ${timeoutMs} ms`));
        }, timeoutMs);
      }
    });
  }

  /**
   * Send an event; resolves with the ack's `data` (`null` when the script gave no
   * reply). Every send carries an id, so the server always answers.
   */
  send<K extends keyof T['send'] & string>(
    event: K,
    data: T['send'][K]['data'],
    options: SendOptions = {},
  ): Promise<T['send'][K]['reply']> {
    return new Promise((resolve, reject) =>
      this.#request(event, data, options.timeout ?? this.#timeout, resolve as (data: unknown) => void, reject, false),
    );
  }

  /**
   * File a call: written at once when connected (or `now`: the resume, which must go
   * before the app's sends), else queued in the offline buffer. The timeout runs from
   * here, buffer time included, so a send never waits longer than it asked to.
   */
  #request(event: string, data: unknown, ms: number, ok: Call['ok'], fail: Call['fail'], now: boolean): void {
    const id = String(++this.#ids);
    let frame: string;
    try {
      frame = JSON.stringify({ event, data, id });
    } catch (e) {
      return fail(new WssError('bad_json', String(e)));
    }
    const call: Call = { id, frame, ok, fail };
    if (now || this.#state === 'connected') this.#write(call);
    else if (!this.#buffer) return fail(new WssError('disconnected', 'not connected (buffering is off)'));
    else if (this.#queue.length >= this.#maxBuffer) {
      return fail(new WssError('buffer_full', `${this.#maxBuffer} sends are already waiting for a connection`));
    } else this.#queue.push(call);
    call.timer = setTimeout(() => {
      this.#calls.delete(id);
      const i = this.#queue.indexOf(call);
      if (i >= 0) this.#queue.splice(i, 1);
      fail(new WssError('timeout', `no answer to ${event} within ${ms} ms`));
    }, ms);
  }

  /**
   * Listen to one of the client's events, or to deliveries of a pack event (`"*"`: all
   * deliveries). Returns the function that removes the listener.
   */
  on<K extends keyof ClientEvents>(event: K, fn: ClientEvents[K]): () => void;
  on<K extends keyof T['receive'] & string>(event: K, fn: (data: T['receive'][K], meta: Meta) => void): () => void;
  on(event: '*', fn: (data: unknown, meta: Meta) => void): () => void;
  on(event: string, fn: (...args: never[]) => void): () => void {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(fn as Fn);
    return () => this.off(event, fn);
  }

  off(event: string, fn: (...args: never[]) => void): void {
    this.#listeners.get(event)?.delete(fn as Fn);
  }

  #emit(event: string, a?: unknown, b?: unknown): void {
    for (const fn of [...(this.#listeners.get(event) ?? [])]) {
      try {
        fn(a, b);
      } catch (e) {
        // The app's bug: let it surface like any uncaught error, but not from inside a
        // state transition that would then be left half done.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  #error(code: string, message: string): void {
    this.#emit('error', new WssError(code, message));
  }

  #set(state: State, info: StateInfo): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit('state', state, info);
  }

  #arm(fn: () => void, ms: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(fn, ms);
  }

  async #dial(): Promise<void> {
    const epoch = ++this.#epoch;
    this.#refused = this.#welcomed = false;
    this.#arm(() => this.#lost({ reason: 'timeout', message: `no $welcome within ${this.#timeout} ms` }), this.#timeout);
    let token: string | null | undefined = this.#token;
    if (this.#getToken) {
      try {
        token = await this.#getToken();
      } catch (e) {
        if (epoch !== this.#epoch) return;
        this.#error('transport_error', `getToken failed: ${e}`);
        return this.#lost({ reason: 'token_error', message: String(e) });
      }
      if (epoch !== this.#epoch) return;
    }
    let url = this.#urls[(this.#url = (this.#url + 1) % this.#urls.length)]!;
    if (token) url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
    let ws: WebSocketLike;
    try {
      ws = new this.#Ws(url);
    } catch (e) {
      // Only a malformed URL throws here; retrying it would fail the same way forever.
      return this.#stop({ reason: 'invalid_url', message: String(e) });
    }
    this.#ws = ws;
    ws.addEventListener('message', (e) => {
      if (ws === this.#ws) this.#frame(e.data);
    });
    ws.addEventListener('error', (e) => {
      if (ws !== this.#ws) return;
      const message = String((e as { message?: unknown }).message ?? 'WebSocket error');
      // Only Node's `ws` says why an upgrade failed ("Unexpected server response:
      // 401"); browsers hide the status, so there a refused token looks like a server
      // that is down and the client keeps retrying (README, "Authentication").
      if (!this.#welcomed && / 401\b/.test(message)) this.#refused = true;
      this.#error(this.#refused ? 'unauthorized' : 'transport_error', message);
    });
    ws.addEventListener('close', (e) => {
      if (ws === this.#ws) this.#lost({ reason: 'closed', closeCode: e.code, message: e.reason });
    });
  }

  /** The current socket is done: reconnect, unless the server said not to. */
  #lost(info: StateInfo): void {
    this.#detach();
    const code = info.closeCode;
    const stop: Reason | undefined = this.#refused
      ? 'unauthorized'
      : code === 1008
        ? 'refused'
        : code === 4000
          ? 'resumed_elsewhere'
          : undefined;
    if (stop === 'resumed_elsewhere') {
      // The session and its rooms now belong to the connection that resumed it;
      // resuming again from here would take them back and close that one in turn.
      this.#session = undefined;
      this.#rooms.clear();
    }
    if (stop) return this.#stop({ ...info, reason: stop });
    this.#set('connecting', info);
    if (this.#state !== 'connecting') return; // a state listener called disconnect()
    const attempt = this.#attempt++;
    const delay = backoff(attempt, this.#min, this.#max);
    this.#arm(() => void this.#dial(), delay);
    this.#emit('reconnect', { attempt, delay });
  }

  #stop(info: StateInfo): void {
    this.#detach();
    const queued = this.#queue;
    this.#queue = [];
    for (const call of queued) this.#settle(call, new WssError('disconnected', `the client stopped (${info.reason})`));
    this.#set('disconnected', info);
  }

  /** Drop the socket, if any, and fail what was waiting on it. */
  #detach(): void {
    this.#epoch++;
    clearTimeout(this.#timer);
    const ws = this.#ws;
    this.#ws = null;
    this.#restored = null;
    try {
      ws?.close(1000);
    } catch {
      // Closing a socket that is already going: nothing left to do.
    }
    const calls = [...this.#calls.values()];
    this.#calls.clear();
    for (const call of calls) {
      this.#settle(call, new WssError('disconnected', 'the connection dropped before the answer; the server may or may not have handled it'));
    }
  }

  #settle(call: Call, error: WssError | null, data?: unknown): void {
    clearTimeout(call.timer);
    if (error) call.fail(error);
    else call.ok(data);
  }

  #write(call: Call): void {
    this.#calls.set(call.id, call);
    this.#ws!.send(call.frame);
  }

  #frame(raw: unknown): void {
    let f: unknown;
    try {
      f = typeof raw === 'string' ? JSON.parse(raw) : null;
    } catch {
      // reported below, like any other frame that is not an object
    }
    if (!isObj(f)) {
      return this.#error('protocol_error', typeof raw === 'string' ? `not a JSON object: ${raw.slice(0, 80)}` : 'binary frame');
    }
    if ('ack' in f) {
      const call = this.#calls.get(String(f.ack));
      // No call: the answer to a send that already timed out.
      if (!call) return;
      this.#calls.delete(call.id);
      return f.ok === true ? this.#settle(call, null, f.data ?? null) : this.#settle(call, toError(f.error));
    }
    const event = f.event;
    if (typeof event !== 'string') return this.#error('protocol_error', 'a frame with neither `event` nor `ack`');
    if (event[0] === '$') return this.#system(event, isObj(f.data) ? f.data : {});
    const meta: Meta = { event };
    const { room, offset } = f;
    if (typeof room === 'string') {
      meta.room = room;
      if (typeof offset === 'number') {
        meta.offset = offset;
        const pos = this.#rooms.get(room);
        if (pos?.offset !== undefined) {
          // Already delivered: a replay that overlaps the live stream.
          if (offset <= pos.offset) return;
          // Deliveries went missing: a new connection's resume replays them in order.
          if (offset > pos.offset + 1) return this.#lost({ reason: 'gap', message: `${room}: offset ${offset} after ${pos.offset}` });
          pos.offset = offset;
        }
      }
    }
    if (!RESERVED.has(event)) this.#emit(event, f.data, meta);
    this.#emit('*', f.data, meta);
  }

  #system(event: string, data: Obj): void {
    const room = data.room;
    if (event === '$welcome') return this.#welcome(data);
    if (event === '$error') return this.#emit('error', toError(data));
    // Other `$` events are from a newer server: ignored, like unknown fields.
    if (typeof room !== 'string') return;
    const pos = this.#rooms.get(room);
    if (event === '$joined') {
      const next: RoomPosition = {};
      if (typeof data.epoch === 'string') next.epoch = data.epoch;
      if (typeof data.offset === 'number') next.offset = data.offset;
      // Within one epoch a position only moves forward: a resume's `$joined` that
      // names an earlier offset than delivered here would otherwise let its replay
      // deliver those offsets twice.
      if (pos?.offset !== undefined && next.offset !== undefined && pos.epoch === next.epoch && pos.offset > next.offset) {
        next.offset = pos.offset;
      }
      this.#rooms.set(room, next);
      this.#restored?.add(room);
      this.#emit('joined', { room, ...next });
    } else if (event === '$left') {
      this.#rooms.delete(room);
      this.#emit('left', { room });
    } else if (event === '$gap') {
      // The server could not fill a hole: deliveries up to `offset` are lost for good.
      // The stream goes on from there (in `epoch`, new when the room's history was
      // lost); without a position the room is unchecked until the next `$joined`.
      if (pos) {
        if (typeof data.epoch === 'string' && typeof data.offset === 'number') {
          pos.epoch = data.epoch;
          pos.offset = data.offset;
        } else {
          delete pos.offset;
        }
      }
      this.#emit('gap', { room });
    }
  }

  #welcome(data: Obj): void {
    const ws = this.#ws;
    if (this.#welcomed || typeof data.conn !== 'string') return this.#error('protocol_error', 'unexpected $welcome');
    this.#welcomed = true;
    clearTimeout(this.#timer);
    const welcome = data as unknown as Welcome;
    this.#emit('welcome', welcome);
    if (ws !== this.#ws) return;
    const fresh = typeof welcome.session === 'string' ? welcome.session : undefined;
    const old = this.#session;
    if (!this.#rooms.size || !old || !fresh) {
      // Nothing to restore, or no way to: rooms held without a resumable session are
      // gone (this connection is in none of them).
      this.#session = fresh;
      return this.#open(this.#forget());
    }
    const rooms: Record<string, RoomPosition> = {};
    for (const [room, p] of this.#rooms) {
      rooms[room] = p.epoch !== undefined && p.offset !== undefined ? { epoch: p.epoch, offset: p.offset } : {};
    }
    const restored = (this.#restored = new Set());
    const ok = (ack: unknown): void => {
      this.#session = fresh;
      const result = isObj(ack) && isObj(ack.rooms) ? ack.rooms : {};
      const events: ResumedInfo[] = [];
      // Rooms it asked for, and any the old connection had joined without this client
      // hearing of it (announced by `$joined` above).
      for (const room of new Set([...Object.keys(rooms), ...Object.keys(result)])) {
        const r = result[room];
        const info: ResumedInfo = { room, recovered: isObj(r) && r.recovered === true };
        if (isObj(r) && typeof r.replayed === 'number') info.replayed = r.replayed;
        // Not announced again: the server did not put this connection back in it.
        if (!restored.has(room)) this.#rooms.delete(room);
        events.push(info);
      }
      this.#open(events);
    };
    const fail = (e: WssError): void => {
      if (ws !== this.#ws) return; // the socket is gone; the next attempt resumes again
      if (TRANSIENT.includes(e.code)) {
        return this.#lost({ reason: e.code === 'timeout' ? 'timeout' : 'resume_failed', message: e.message });
      }
      if (e.code !== 'session_expired') this.#emit('error', e);
      this.#session = fresh;
      this.#open(this.#forget());
    };
    this.#request('$resume', { session: old, rooms }, this.#timeout, ok, fail, true);
  }

  /** Give up every held room: each is reported as not recovered, and left. */
  #forget(): ResumedInfo[] {
    const lost = [...this.#rooms.keys()].map((room) => ({ room, recovered: false }));
    this.#rooms.clear();
    return lost;
  }

  /** The attempt succeeded: flush the offline buffer, then tell the app. */
  #open(resumed: ResumedInfo[]): void {
    this.#restored = null;
    // Reset only now, not at the welcome: a server that welcomes and then cannot
    // resume must not be redialled at the shortest delay forever.
    this.#attempt = 0;
    const queued = this.#queue;
    this.#queue = [];
    for (const call of queued) this.#write(call);
    this.#set('connected', {});
    for (const info of resumed) this.#emit('resumed', info);
  }
}
