// Compiled by npm run typecheck (tsc --noEmit): the declarations describe
// how the README uses the client, in a browser and in Node with ws.
import WebSocket from 'ws';
import {
  connect,
  HubError,
  PROTOCOL_VERSION,
  type Member,
  type Message,
  type Presence,
  type PresenceEvent,
  type Receipt,
  type State,
} from '@hubcluster/client';

const v: '1.1' = PROTOCOL_VERSION;
const hub = connect('ws://127.0.0.1:8080/ws', {
  urls: ['ws://127.0.0.1:8081/ws'],
  token: async () => 'jwt',
  refreshBefore: 30_000,
  queueSize: 0,
});
connect('ws://127.0.0.1:8080/ws', { WebSocket, token: 'jwt', tokenRefresh: () => 'jwt' });
connect('ws://127.0.0.1:8080/ws', { WebSocket: globalThis.WebSocket });

const off: () => void = hub.on('disconnected', ({ code, reason, retryIn }) => console.log(code + retryIn, reason));
off();
hub.on('recovered', ({ room, count, recovered }) => console.log(room, count.toFixed(), recovered));
hub.on('gap', ({ room }) => room.toUpperCase());
hub.on('closed', ({ error }) => error.closeCode);
hub.on('error', (e: HubError) => e.code);
hub.on('join', ({ type, room, client, user, node }) => console.log(type === 'join', room, client, user, node));
hub.on('leave', (ev: PresenceEvent) => ev.client);
hub.on('presence', ({ room, count, members }: Presence) => console.log(room, count, members.map((m) => m.client)));
const s: State = hub.state;

interface Chat {
  user: string;
  text: string;
}
async function main(): Promise<void> {
  await hub.ready();
  const sub = await hub.subscribe<Chat>('lobby', (m: Message<Chat>) => console.log(m.offset, m.data.user, m.room));
  const { epoch, offset } = sub.position;
  const chat: Chat = { user: 'a', text: 'hi' };
  const r: Receipt = await hub.publish('lobby', chat, { key: 'k1' });
  try {
    await hub.publish('lobby', 1);
  } catch (e) {
    if (e instanceof HubError && e.code === 'timeout') await hub.publish('lobby', 1, { key: e.key });
  }
  const members = new Map<string, Member>();
  const watched = await hub.subscribe('lobby:2', () => {}, {
    presence: true,
    onJoin: (m) => members.set(m.client, m),
    onLeave: ({ client }) => members.delete(client),
    onPresence: (snap) => {
      members.clear();
      for (const m of snap.members) members.set(m.client, m);
    },
  });
  await hub.subscribe('lobby:4', () => {}, { onPresence: ({ count }) => count.toFixed() });
  const p: Presence = await hub.presence(watched.room);
  console.log(watched.presence, p.count, p.members.map((m) => m.user || m.client), p.room);
  await hub.subscribe('lobby:3', () => {}, { onLeave: (ev) => ev.node });
  await sub.unsubscribe();
  await hub.unsubscribe('lobby');
  hub.close();
  console.log(v, s, epoch, offset, r.key);
}
main();
