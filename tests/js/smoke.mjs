// Smoke test of the official centrifuge-js SDK (npm "centrifuge", 5.x) against the
// Lounges gateway, with the "ws" package as its WebSocket under Node.
//
//   node smoke.mjs <ws_url> <token> <channel> [timeout_ms] [--protobuf] [--recovery]
//
// Connects, subscribes to <channel>, publishes a message, waits until it arrives back,
// then prints {"event": "published"} and waits for one message published by someone
// else (the Python test publishes it when it reads that line), asks for presence stats
// and makes two rpc calls. With --recovery it then prints {"event": "awaiting_recovery"}
// and waits until the subscription is recovered after a dropped connection with the two
// publications made meanwhile (the Python test cuts the link, publishes them and lets
// the client back in). Every line on stdout is one JSON object; the last one is the
// summary. Exit status 0 only when all went well.
//
// --protobuf uses the SDK's Protobuf build (the "centrifuge-protobuf" WebSocket
// subprotocol, binary frames): publish and rpc data are then bytes, the UTF-8 JSON
// document the JSON encoding carries inline, and publications deliver bytes. The
// summary's "wire" says what really went over the socket (subprotocol, frame kinds),
// and "data_kinds" what the SDK handed over as publication and rpc data.

import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';

const args = process.argv.slice(2);
const flags = new Set(args.filter((arg) => arg.startsWith('--')));
const [url, token, channel, timeoutArg] = args.filter((arg) => !arg.startsWith('--'));
const unknown = [...flags].filter((flag) => flag !== '--protobuf' && flag !== '--recovery');
if (!url || !token || !channel || unknown.length) {
  console.error('usage: node smoke.mjs <ws_url> <token> <channel> [timeout_ms] [--protobuf] [--recovery]');
  process.exit(64);
}
const timeoutMs = Number(timeoutArg || 20000);
const protobuf = flags.has('--protobuf');
const recovery = flags.has('--recovery');
const { Centrifuge } = await import(protobuf ? 'centrifuge/build/protobuf' : 'centrifuge');

const summary = {
  sdk: 'centrifuge-js',
  encoding: protobuf ? 'protobuf' : 'json',
  connected: false,
  connects: 0,
  client: null,
  transport: null,
  server_subscriptions: [],
  subscribed: null,
  subscriptions: [],
  publications: [],
  presence_stats: null,
  rpc: null,
  read: null,
  recovery: null,
  data_kinds: [],
  wire: { subprotocols: [], received: { text: 0, binary: 0 }, sent: { text: 0, binary: 0 } },
  errors: [],
  disconnected: [],
};

const emit = (object) => process.stdout.write(JSON.stringify(object) + '\n');

// What the SDK hands over as data, and the JSON value it carries: in Protobuf, bytes.
const kindOf = (data) => (data instanceof Uint8Array ? 'bytes' : data === undefined || data === null ? 'none' : typeof data);
const encode = (value) => (protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value);
const decode = (data) => {
  if (data instanceof Uint8Array) {
    return data.length ? JSON.parse(new TextDecoder().decode(data)) : null; // no bytes: no data
  }
  return data ?? null;
};

// The SDK's WebSocket, recording what crosses the wire.
class RecordingWebSocket extends WebSocket {
  constructor(...params) {
    super(...params);
    this.on('open', () => summary.wire.subprotocols.push(this.protocol));
    this.on('message', (_data, isBinary) => summary.wire.received[isBinary ? 'binary' : 'text']++);
  }

  send(data, ...rest) {
    summary.wire.sent[typeof data === 'string' ? 'text' : 'binary']++;
    return super.send(data, ...rest);
  }
}

const client = new Centrifuge(url, {
  token,
  websocket: RecordingWebSocket,
  name: 'lounges-js-smoke',
  minReconnectDelay: 200,
  maxReconnectDelay: 1000,
  timeout: 10000,
});
client.on('connected', (ctx) => {
  summary.connected = true;
  summary.connects++;
  summary.client = ctx.client;
  summary.transport = ctx.transport;
});
client.on('disconnected', (ctx) => summary.disconnected.push({ code: ctx.code, reason: ctx.reason }));
client.on('error', (ctx) => summary.errors.push({ type: ctx.type, code: ctx.error?.code, message: ctx.error?.message }));
// Server-side subscriptions (the personal user#<id> channel).
client.on('subscribed', (ctx) => {
  if (!summary.server_subscriptions.includes(ctx.channel)) summary.server_subscriptions.push(ctx.channel);
});

const sub = client.newSubscription(channel, { recoverable: true, positioned: true });
sub.on('error', (ctx) => summary.errors.push({ type: `subscription ${ctx.type}`, code: ctx.error?.code, message: ctx.error?.message }));
sub.on('subscribed', (ctx) =>
  summary.subscriptions.push({
    was_recovering: ctx.wasRecovering,
    recovered: ctx.recovered,
    offset: ctx.streamPosition?.offset ?? null,
  }),
);
sub.on('publication', (ctx) => {
  summary.data_kinds.push(kindOf(ctx.data));
  summary.publications.push({ offset: ctx.offset ?? 0, data: decode(ctx.data) });
});

function waitFor(predicate, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = setInterval(() => {
      if (predicate()) {
        clearInterval(poll);
        resolve();
      } else if (Date.now() - started > timeoutMs) {
        clearInterval(poll);
        reject(new Error(`timed out waiting for ${what}`));
      }
    }, 20);
  });
}

const stored = () => summary.publications.filter((p) => p.offset > 0);

let status = 0;
const overall = setTimeout(() => {
  summary.errors.push({ type: 'timeout', message: `no result within ${timeoutMs * 2} ms` });
  emit(summary);
  process.exit(3);
}, timeoutMs * 2);

try {
  client.connect();
  await client.ready(timeoutMs);
  sub.subscribe();
  await sub.ready(timeoutMs);
  summary.subscribed = channel;
  emit({ event: 'subscribed', channel });

  const clientId = randomUUID();
  await sub.publish(encode({ text: 'hello from centrifuge-js', client_id: clientId }));
  await waitFor(() => stored().some((p) => p.data?.message?.client_id === clientId), 'our own publication');
  emit({ event: 'published' });

  await waitFor(() => stored().some((p) => p.data?.message?.client_id !== clientId), 'a publication by someone else');
  const stats = await sub.presenceStats();
  summary.presence_stats = { num_clients: stats.numClients, num_users: stats.numUsers };
  const typing = await client.rpc('typing', encode({ channel }));
  summary.data_kinds.push(kindOf(typing.data));
  summary.rpc = { method: 'typing', data: decode(typing.data) };
  const read = await client.rpc('read', encode({ channel, offset: 2 }));
  summary.data_kinds.push(kindOf(read.data));
  summary.read = decode(read.data);

  if (recovery) {
    const had = stored().length;
    const subscribedTimes = summary.subscriptions.length;
    emit({ event: 'awaiting_recovery', offset: stored().at(-1).offset });
    await waitFor(
      () => summary.subscriptions.length > subscribedTimes && stored().length >= had + 2,
      'the publications missed while the connection was down',
    );
    summary.recovery = summary.subscriptions.at(-1);
  }
} catch (error) {
  summary.errors.push({ type: 'exception', code: error?.code, message: error?.message ?? String(error) });
  status = 1;
} finally {
  clearTimeout(overall);
  client.disconnect();
}
emit(summary);
process.exit(status);
