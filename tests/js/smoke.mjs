// Smoke test of the official centrifuge-js SDK (npm "centrifuge", 5.x) against the
// Lounges gateway, with the "ws" package as its WebSocket under Node.
//
//   node smoke.mjs <ws_url> <token> <channel> [timeout_ms]
//
// Connects, subscribes to <channel>, publishes a message, waits until it arrives back,
// then prints {"event": "published"} and waits for one message published by someone
// else (the Python test publishes it when it reads that line). Every line on stdout is
// one JSON object; the last one is the summary. Exit status 0 only when all went well.

import { randomUUID } from 'node:crypto';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const [url, token, channel, timeoutArg] = process.argv.slice(2);
if (!url || !token || !channel) {
  console.error('usage: node smoke.mjs <ws_url> <token> <channel> [timeout_ms]');
  process.exit(64);
}
const timeoutMs = Number(timeoutArg || 20000);

const summary = {
  sdk: 'centrifuge-js',
  connected: false,
  client: null,
  transport: null,
  server_subscriptions: [],
  subscribed: null,
  publications: [],
  presence_stats: null,
  rpc: null,
  errors: [],
  disconnected: [],
};

const emit = (object) => process.stdout.write(JSON.stringify(object) + '\n');

const client = new Centrifuge(url, {
  token,
  websocket: WebSocket,
  name: 'lounges-js-smoke',
  minReconnectDelay: 200,
  maxReconnectDelay: 1000,
  timeout: 10000,
});
client.on('connected', (ctx) => {
  summary.connected = true;
  summary.client = ctx.client;
  summary.transport = ctx.transport;
});
client.on('disconnected', (ctx) => summary.disconnected.push({ code: ctx.code, reason: ctx.reason }));
client.on('error', (ctx) => summary.errors.push({ type: ctx.type, code: ctx.error?.code, message: ctx.error?.message }));
// Server-side subscriptions (the personal user#<id> channel).
client.on('subscribed', (ctx) => summary.server_subscriptions.push(ctx.channel));

const sub = client.newSubscription(channel, { recoverable: true, positioned: true });
sub.on('error', (ctx) => summary.errors.push({ type: `subscription ${ctx.type}`, code: ctx.error?.code, message: ctx.error?.message }));
sub.on('publication', (ctx) => summary.publications.push({ offset: ctx.offset ?? 0, data: ctx.data }));

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
  await sub.publish({ text: 'hello from centrifuge-js', client_id: clientId });
  await waitFor(() => stored().some((p) => p.data?.message?.client_id === clientId), 'our own publication');
  emit({ event: 'published' });

  await waitFor(() => stored().some((p) => p.data?.message?.client_id !== clientId), 'a publication by someone else');
  const stats = await sub.presenceStats();
  summary.presence_stats = { num_clients: stats.numClients, num_users: stats.numUsers };
  const rpc = await client.rpc('typing', { channel });
  summary.rpc = { method: 'typing', data: rpc.data ?? null };
} catch (error) {
  summary.errors.push({ type: 'exception', code: error?.code, message: error?.message ?? String(error) });
  status = 1;
} finally {
  clearTimeout(overall);
  client.disconnect();
}
emit(summary);
process.exit(status);
