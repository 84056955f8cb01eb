/**
 * Compiled by `npm test`, never run. Each `@ts-expect-error` line must fail to type
 * check (tsc reports an unused one), so this pins what the public types reject as
 * well as what they accept.
 */
import { WssClient, WssError, type EventTypes, type Meta, type State } from '@wss-engine/client';

// The browser's own WebSocket fits the `websocket` option, and is the default.
const untyped = new WssClient(['wss://a.example/ws', 'wss://b.example/ws'], { websocket: WebSocket, getToken: async () => 'jwt' });

// Without an event map every name is accepted and every payload is `unknown`, never
// `any`: using a reply needs a check first.
export async function loose(): Promise<void> {
  const reply = await untyped.send('anything', { x: 1 }, { timeout: 100 });
  // @ts-expect-error reply is unknown
  reply.foo;
  untyped.on('whatever', (data, meta: Meta) => {
    // @ts-expect-error data is unknown
    data.foo;
    const offset: number | undefined = meta.offset;
    void offset;
  });
}

// What `wss-types` will generate from a pack: one entry per event.
interface Chat extends EventTypes {
  send: {
    'chat.join': { data: { room: string }; reply: { room: string; members: number } };
    'chat.message': { data: { room: string; text: string }; reply: null };
  };
  receive: {
    'chat.message': { room: string; text: string; from: string };
  };
}

export async function typed(): Promise<void> {
  const chat = new WssClient<Chat>('wss://chat.example/ws');
  const joined = await chat.send('chat.join', { room: 'lobby' });
  const members: number = joined.members;
  void members;
  // @ts-expect-error misspelled property
  await chat.send('chat.join', { rooom: 'lobby' });
  // @ts-expect-error not an event of this pack
  await chat.send('chat.leave', { room: 'lobby' });
  chat.on('chat.message', (m) => {
    const text: string = m.text;
    void text;
  });
  // The client's own events keep their types beside the pack's.
  chat.on('state', (s: State, info) => void [s, info.reason]);
  chat.on('resumed', ({ room, recovered }) => void [room, recovered]);
  chat.on('error', (e: WssError) => void e.details?.map((d) => d.path));
  // @ts-expect-error a state is one of three strings
  chat.on('state', (s: number) => void s);
}
