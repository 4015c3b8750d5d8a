// A centrifuge-js subscriber that reports everything it sees, for tests that put the
// official JS SDK into a room next to other clients (tests/support/js_sdk.py JsListener).
//
//   node listen.mjs <ws_url> <token> <channel> [--protobuf] [--join-leave]
//
// Connects, subscribes to <channel> (recoverable, positioned; with --join-leave it asks
// for join and leave pushes) and prints one JSON line per event: {"event": "subscribed"},
// {"event": "publication", "offset", "data", "kind"} (data decoded from the bytes the
// Protobuf build delivers; kind: what the SDK handed over), {"event": "join"|"leave",
// "info"}, {"event": "error", ...}. When its stdin closes it disconnects and prints the
// summary ({"event": "summary", "wire", "errors"}), exit status 0.
//
// --protobuf uses the SDK's Protobuf build ("centrifuge-protobuf" subprotocol, binary
// frames); "wire" in the summary says what really crossed the socket.

import WebSocket from 'ws';

const args = process.argv.slice(2);
const flags = new Set(args.filter((arg) => arg.startsWith('--')));
const [url, token, channel] = args.filter((arg) => !arg.startsWith('--'));
const unknown = [...flags].filter((flag) => flag !== '--protobuf' && flag !== '--join-leave');
if (!url || !token || !channel || unknown.length) {
  console.error('usage: node listen.mjs <ws_url> <token> <channel> [--protobuf] [--join-leave]');
  process.exit(64);
}
const protobuf = flags.has('--protobuf');
const { Centrifuge } = await import(protobuf ? 'centrifuge/build/protobuf' : 'centrifuge');

const emit = (object) => process.stdout.write(JSON.stringify(object) + '\n');
const wire = { subprotocols: [], received: { text: 0, binary: 0 }, sent: { text: 0, binary: 0 } };
const errors = [];

const kindOf = (data) => (data instanceof Uint8Array ? 'bytes' : data === undefined || data === null ? 'none' : typeof data);
const decode = (data) => {
  if (data instanceof Uint8Array) {
    return data.length ? JSON.parse(new TextDecoder().decode(data)) : null;
  }
  return data ?? null;
};
const info = (ctx) => ({
  user: ctx.info.user,
  client: ctx.info.client,
  conn_info: decode(ctx.info.connInfo),
  chan_info: decode(ctx.info.chanInfo),
});

class RecordingWebSocket extends WebSocket {
  constructor(...params) {
    super(...params);
    this.on('open', () => wire.subprotocols.push(this.protocol));
    this.on('message', (_data, isBinary) => wire.received[isBinary ? 'binary' : 'text']++);
  }

  send(data, ...rest) {
    wire.sent[typeof data === 'string' ? 'text' : 'binary']++;
    return super.send(data, ...rest);
  }
}

const client = new Centrifuge(url, {
  token,
  websocket: RecordingWebSocket,
  name: 'lounges-js-listener',
  minReconnectDelay: 200,
  maxReconnectDelay: 1000,
  timeout: 10000,
});
client.on('error', (ctx) => {
  errors.push({ type: ctx.type, code: ctx.error?.code, message: ctx.error?.message });
  emit({ event: 'error', ...errors.at(-1) });
});

const sub = client.newSubscription(channel, { recoverable: true, positioned: true, joinLeave: flags.has('--join-leave') });
sub.on('error', (ctx) => {
  errors.push({ type: `subscription ${ctx.type}`, code: ctx.error?.code, message: ctx.error?.message });
  emit({ event: 'error', ...errors.at(-1) });
});
sub.on('subscribed', (ctx) => emit({ event: 'subscribed', was_recovering: ctx.wasRecovering, recovered: ctx.recovered }));
sub.on('publication', (ctx) => emit({ event: 'publication', offset: ctx.offset ?? 0, data: decode(ctx.data), kind: kindOf(ctx.data) }));
sub.on('join', (ctx) => emit({ event: 'join', info: info(ctx) }));
sub.on('leave', (ctx) => emit({ event: 'leave', info: info(ctx) }));

process.stdin.on('end', () => {
  client.disconnect();
  emit({ event: 'summary', wire, errors });
  process.exit(0);
});
process.stdin.resume();
client.connect();
sub.subscribe();
