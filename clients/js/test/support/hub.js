// Test support: real node processes (the binary make build writes to
// bin/node), a real redis-server, tokens, and waiting for events.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdirSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after } from 'node:test';
import { repoRoot, artifacts } from './paths.js';

export { artifacts };

// nodeBinary is HUBCLUSTER_NODE_BIN (make test sets it) or bin/node, which
// npm test's pretest builds.
export function nodeBinary() {
  const bin = process.env.HUBCLUSTER_NODE_BIN || path.join(repoRoot, 'bin', 'node');
  if (!existsSync(bin)) throw new Error(`no node binary at ${bin}: run make build, or npm test`);
  return bin;
}

// freePort returns a port nothing listens on now, on 127.0.0.1.
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => (s.destroy(), resolve(true)));
    s.on('error', () => resolve(false));
  });
}

const running = new Set();
after(async () => {
  await Promise.all([...running].map((p) => p.stop('SIGKILL')));
});

// Process is a child process the tests started; its output is kept and
// written under artifacts/js-logs/ when it stops.
class Process {
  constructor(name, cmd, args, env) {
    this.name = name;
    this.log = '';
    this.child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout.on('data', (b) => (this.log += b));
    this.child.stderr.on('data', (b) => (this.log += b));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    running.add(this);
  }

  // stop sends signal and resolves with the exit once the process is gone.
  async stop(signal = 'SIGTERM') {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    const exit = await this.exited;
    if (running.delete(this)) {
      const dir = path.join(artifacts, 'js-logs');
      mkdirSync(dir, { recursive: true });
      writeFileSync(path.join(dir, `${this.name}.log`), this.log);
    }
    return exit;
  }
}

// Logs are named after the test file, so that a run overwrites the last.
const logPrefix = path.basename(process.argv[1] || 'test', '.test.js');
let procs = 0;

// startNode runs a node on port (a free one when not given) with env, and
// resolves once it is ready.
export async function startNode({ env = {}, port } = {}) {
  port = port || (await freePort());
  const p = new Process(`${logPrefix}-${++procs}-${env.HUB_NODE_ID || 'node'}`, nodeBinary(), [], {
    PATH: process.env.PATH,
    HUB_ADDR: `127.0.0.1:${port}`,
    HUB_LOG_LEVEL: 'debug',
    HUB_LOG_FORMAT: 'text',
    HUB_DRAIN_DELAY: '0s',
    ...env,
  });
  p.port = port;
  p.addr = `127.0.0.1:${port}`;
  p.url = `ws://127.0.0.1:${port}/ws`;
  p.http = `http://127.0.0.1:${port}`;
  await waitFor(async () => {
    if (p.child.exitCode !== null) throw new Error(`node exited: ${p.log}`);
    try {
      return (await fetch(p.http + '/readyz')).status === 200;
    } catch {
      return false;
    }
  }, `node on ${p.addr} to be ready`);
  return p;
}

// startRedis runs Debian's redis-server on a free port, without persistence.
export async function startRedis() {
  const port = await freePort();
  const p = new Process(`${logPrefix}-${++procs}-redis`, 'redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no',
  ], { PATH: process.env.PATH });
  await waitFor(async () => {
    if (p.child.exitCode !== null) throw new Error(`redis-server exited: ${p.log}`);
    return canConnect(port);
  }, 'redis-server to listen');
  p.url = `redis://127.0.0.1:${port}`;
  return p;
}

// waitFor polls pred until it returns true; past timeoutMs it fails the
// test (a bound on a hang, not a measurement).
export async function waitFor(pred, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// once resolves with the next event of client that pred accepts; past
// timeoutMs it fails the test.
export function once(client, event, pred = () => true, timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (off(), reject(new Error(`timed out waiting for the event ${event}`))), timeoutMs);
    const off = client.on(event, (d) => {
      if (pred(d)) {
        off();
        clearTimeout(timer);
        resolve(d);
      }
    });
  });
}

export const secret = '0123456789abcdef0123456789abcdef';

// token signs an HS256 JWT for sub that grants every room, valid ttlSec.
export function token(ttlSec, claims = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = b64({ sub: 'u1', exp: Math.floor(Date.now() / 1000) + ttlSec, subscribe: ['*'], publish: ['*'], ...claims });
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

// inbox collects what a subscription's handler receives.
export function inbox() {
  const msgs = [];
  return {
    msgs,
    handle: (m) => msgs.push(m),
    wait: (n) => waitFor(() => msgs.length >= n, () => `${n} messages (got ${msgs.length})`).then(() => msgs),
  };
}

// history reads a room's stored messages from a node.
export async function history(node, room) {
  const res = await fetch(`${node.http}/v1/history?room=${encodeURIComponent(room)}`);
  return res.json();
}
