#!/usr/bin/env node
// A Snakepit worker in JavaScript (Node.js >= 18, nothing from npm): docs/protocol.md, and no code
// of the Python bridge (see docs/other_languages.md). In a pool, with its path from the project root:
//   command: ["node", "examples/node_worker/worker.js"], shm_threshold: :infinity
'use strict';
const net = require('net');

// MessagePack, the subset Snakepit sends: nil, bool, int, float, str, bin,
// array, map, and ext 83 (a blob: a large str or bin sent outside the frame).
const byte = (...b) => Buffer.from(b);
const num = (code, size, write, v) => { const b = Buffer.alloc(1 + size); b[0] = code; b[write](v, 1); return b; };
const head = (n, fix, fixMax, c8, c16, c32) => (n < fixMax ? byte(fix | n) : c8 && n < 256 ? byte(c8, n)
  : n < 65536 ? num(c16, 2, 'writeUInt16BE', n) : num(c32, 4, 'writeUInt32BE', n));
function encode(v, out = []) {
  if (v === null || v === undefined) out.push(byte(0xc0));
  else if (typeof v === 'boolean') out.push(byte(v ? 0xc3 : 0xc2));
  else if (typeof v === 'bigint') out.push(v < 0n ? num(0xd3, 8, 'writeBigInt64BE', v) : num(0xcf, 8, 'writeBigUInt64BE', v));
  else if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) out.push(num(0xcb, 8, 'writeDoubleBE', v)); // 1.5, NaN, 1e300
    else if (v >= -32 && v < 128) out.push(byte(v & 0xff));
    else if (v >= -0x80000000 && v <= 0xffffffff) out.push(v < 0 ? num(0xd2, 4, 'writeInt32BE', v) : num(0xce, 4, 'writeUInt32BE', v));
    else encode(BigInt(v), out);
  } else if (typeof v === 'string') { const s = Buffer.from(v); out.push(head(s.length, 0xa0, 32, 0xd9, 0xda, 0xdb), s); }
  else if (v instanceof Uint8Array) out.push(head(v.length, 0, 0, 0xc4, 0xc5, 0xc6), v);
  else if (Array.isArray(v)) { out.push(head(v.length, 0x90, 16, 0, 0xdc, 0xdd)); v.forEach((x) => encode(x, out)); }
  else { const ks = Object.keys(v); out.push(head(ks.length, 0x80, 16, 0, 0xde, 0xdf)); ks.forEach((k) => { encode(k, out); encode(v[k], out); }); }
  return out;
}
// Throws on malformed bytes; an extension it cannot take is put in `problems`.
function decode(buf, blobs = [], problems = []) {
  let p = 0;
  const take = (n) => { if (p + n > buf.length) throw new Error('truncated MessagePack'); p += n; return buf.subarray(p - n, p); };
  const uint = (n) => take(n).readUIntBE(0, n);
  const SAFE = BigInt(Number.MAX_SAFE_INTEGER), int64 = (b) => (b >= -SAFE && b <= SAFE ? Number(b) : b);
  const list = (n) => Array.from({ length: n }, () => value());
  const map = (n) => { const m = Object.create(null); for (let i = 0; i < n; i++) m[value()] = value(); return m; };
  function ext(size) {
    const type = take(1).readInt8(0), data = take(size), blob = type === 83 && size >= 5 && blobs[data.readUInt32BE(0)];
    if (blob && data[4] === 0x62) return blob; // 'b': bytes
    if (blob && data[4] === 0x73) return blob.toString(); // 's': a string
    problems.push(type === 84 || data[4] === 0x74 ? 'tensors are not supported'
      : type === 85 || type === 86 ? 'no shared memory here (set the pool\'s shm_threshold: :infinity)'
        : `extension type ${type} is not supported`);
    return null;
  }
  function value() {
    const c = take(1)[0];
    if (c < 0x80 || c >= 0xe0) return c < 0x80 ? c : c - 256;
    if (c < 0xa0) return c < 0x90 ? map(c & 15) : list(c & 15);
    if (c < 0xc0) return take(c & 31).toString();
    switch (c) {
      case 0xc0: return null;
      case 0xc2: case 0xc3: return c === 0xc3;
      case 0xc4: case 0xc5: case 0xc6: return Buffer.from(take(uint(1 << (c - 0xc4))));
      case 0xc7: case 0xc8: case 0xc9: return ext(uint(1 << (c - 0xc7)));
      case 0xca: return take(4).readFloatBE(0);
      case 0xcb: return take(8).readDoubleBE(0);
      case 0xcc: case 0xcd: case 0xce: return uint(1 << (c - 0xcc));
      case 0xcf: return int64(take(8).readBigUInt64BE(0));
      case 0xd0: case 0xd1: case 0xd2: { const n = 1 << (c - 0xd0); return take(n).readIntBE(0, n); }
      case 0xd3: return int64(take(8).readBigInt64BE(0));
      case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: return ext(1 << (c - 0xd4));
      case 0xd9: case 0xda: case 0xdb: return take(uint(1 << (c - 0xd9))).toString();
      case 0xdc: case 0xdd: return list(uint(2 << (c - 0xdc)));
      case 0xde: case 0xdf: return map(uint(2 << (c - 0xde)));
      default: throw new Error(`no MessagePack value starts with 0x${c.toString(16)}`);
    }
  }
  const v = value();
  if (p !== buf.length) throw new Error('bytes after the value');
  return v;
}

// Frames: a 4-byte big-endian length, then MessagePack [kind, id, body].
const env = (name, dflt) => Number(process.env[name] || dflt);
const MAX_FRAME = env('SNAKEPIT_MAX_FRAME_BYTES', 2 ** 26), SLOTS = env('SNAKEPIT_CONCURRENCY', 1);
const fail = (kind, message, e) => ({ kind, type: e ? e.name : null, message, traceback: e ? e.stack : null, tool: null });
function send(kind, id, body) {
  let msg = Buffer.concat(encode([kind, id, body]));
  if (msg.length > MAX_FRAME) msg = Buffer.concat(encode(['error', id, fail('unencodable_result', `${msg.length} bytes, over the limit`)]));
  const len = Buffer.alloc(4); len.writeUInt32BE(msg.length);
  process.stdout.write(Buffer.concat([len, msg]));
}
// Reads frames from `stream`; `onFrame(bytes, blobs)` returns false to leave one (and those behind
// it) unread for now. Returns the function that reads on, and one that counts the bytes read.
function frames(stream, onFrame) {
  let buf = Buffer.alloc(0), read = 0, blobs = [];
  const pump = () => {
    while (buf.length >= 4) {
      const n = buf.readUInt32BE(0), size = n & 0x7fffffff;
      if (size > MAX_FRAME) throw new Error(`a frame of ${size} bytes, over the limit`);
      if (buf.length < 4 + size) return;
      const bytes = buf.subarray(4, 4 + size);
      if (n < 0x80000000 && onFrame(bytes, blobs) === false) return;
      if (n >= 0x80000000) blobs.push(Buffer.from(bytes)); else blobs = [];
      buf = buf.subarray(4 + size); read += 4 + size;
    }
  };
  stream.on('data', (chunk) => { buf = Buffer.concat([buf, chunk]); pump(); });
  return [pump, () => read];
}

// The tools. One may return a Promise, and set `call.cancel` to stop early.
const TOOLS = {
  echo: (args) => args,
  add: ({ a, b }) => { if (typeof a === 'number' && typeof b === 'number') return a + b; throw Object.assign(new TypeError('add takes numbers a and b'), { kind: 'bad_arguments' }); },
  boom: ({ message }) => { throw new Error(message || 'boom'); },
  sleep: ({ ms }, call) => new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms, ms);
    call.cancel = () => { clearTimeout(timer); reject(Object.assign(new Error('cancelled'), { kind: 'cancelled' })); };
  }),
  spin: ({ ms }) => { for (const end = Date.now() + ms; Date.now() < end;); return ms; }, // deaf to cancel and heartbeats
  crash: ({ status }) => process.exit(status || 1),
  env: ({ name }) => process.env[name] ?? null,
};
const running = new Map(), cancelledEarly = new Set(), reclaimed = new Set();
let eof = false; // stdin closed: exit once the calls read are answered
async function run(id, { tool, args, stream }) {
  const call = {}; running.set(id, call);
  try {
    if (!Object.hasOwn(TOOLS, tool)) throw Object.assign(new Error(`no tool named ${tool}`), { kind: 'unknown_tool' });
    const result = await TOOLS[tool](args || {}, call);
    if (Number.isInteger(stream)) { send('chunk', id, result); send('done', id, null); } else send('result', id, result);
  } catch (e) { send('error', id, { ...fail(e.kind || 'exception', e.message, e), tool }); }
  running.delete(id); setImmediate(readOn); // a slot is free once its answer is written
}
const [pump, consumed] = frames(process.stdin, (bytes, blobs) => {
  if (running.size >= SLOTS) return false; // calls behind the running ones stay unread (see "Reclaim")
  const problems = [], [kind, id, body] = decode(bytes, blobs, problems);
  if (kind === 'heartbeat') send('heartbeat', id, null);
  else if (kind !== 'call' || reclaimed.delete(id)) return true; // shm, session_end; a call given back
  else if (cancelledEarly.delete(id)) send('error', id, fail('cancelled', 'cancelled before it started'));
  else if (problems.length) send('error', id, fail('bad_request', problems.join('; ')));
  else run(id, body);
  return true;
});
const readOn = () => { pump(); if (eof && running.size === 0) process.stdout.write('', () => process.exit(0)); };
process.stdin.on('end', () => { eof = true; readOn(); });

// The control pipe: heartbeat, cancel, reclaim; ack is ignored (no tool streams).
frames(new net.Socket({ fd: env('SNAKEPIT_CONTROL_FD', 3), readable: true, writable: false }), (bytes) => {
  const [kind, id, offset] = decode(bytes);
  if (kind === 'heartbeat') send('heartbeat', id, null);
  else if (kind === 'cancel' && running.has(id)) running.get(id).cancel?.();
  else if (kind === 'cancel' && cancelledEarly.add(id).size > 256) cancelledEarly.delete(cancelledEarly.values().next().value);
  else if (kind === 'reclaim' && consumed() <= offset && !reclaimed.has(id)) { reclaimed.add(id); send('reclaimed', id, null); }
});
send('ready', 0, { protocol: 3, pid: process.pid, adapter: 'examples/node_worker', tools: Object.keys(TOOLS), codec: 'worker.js', python: `node ${process.version}` });
