// The demo page in a real headless Chromium (Debian's chromium, driven with
// playwright-core): two pages on two nodes of a Redis cluster chat; the node
// of one page drains mid-conversation; the page reconnects to a node that
// comes up, shows what it recovered, and both pages end with the same
// complete list of messages in the same order. Each page lists who is in
// the room and on which node (presence), as the users move. Screenshots of
// the pages go to artifacts/browser/ (HUB_TEST_ARTIFACTS overrides
// artifacts/).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startNode, startRedis, freePort, artifacts, token, secret } from './support/hub.js';

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const present = existsSync(executablePath);
// Skipped only on a developer's machine without Chromium; under CI it fails.
const skip = !present && process.env.CI !== 'true' && `no Chromium at ${executablePath}: scripts/browser-env.sh installs it`;

test('two pages on two nodes chat across a drain and end with the same messages', { skip }, async (t) => {
  assert.ok(present, `Chromium is missing at ${executablePath} (scripts/browser-env.sh installs it)`);
  const redis = await startRedis();
  t.after(() => redis.stop());
  const env = (id) => ({
    HUB_NODE_ID: id,
    HUB_REDIS_URL: redis.url,
    HUB_DEMO: 'true',
    // A page served by one node connects to the others.
    HUB_ALLOWED_ORIGINS: '127.0.0.1:*',
    HUB_RECONNECT_WINDOW: '1s',
    HUB_REDIS_PROBE_INTERVAL: '200ms',
    HUB_REDIS_PROBE_TIMEOUT: '2s',
    // Users: the page passes its token, whose sub presence shows.
    HUB_JWT_SECRET: secret,
  });
  const [a, b] = await Promise.all([startNode({ env: env('a') }), startNode({ env: env('b') })]);
  // c comes up only after the drain: until then alice's page has nowhere to
  // go, so what bob says meanwhile is certainly recovered, not live.
  const cPort = await freePort();

  const profile = mkdtempSync(path.join(os.tmpdir(), 'hubcluster-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 900, height: 640 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  t.after(async () => {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  });
  const pageErrors = [];
  const open = async (node, name, alternate) => {
    const page = await browser.newPage();
    page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
    const jwt = token(600, { sub: name });
    await page.goto(`${node.http}/?name=${name}&room=lobby&urls=${encodeURIComponent(alternate)}&token=${jwt}`);
    return page;
  };
  const alice = await open(a, 'alice', `ws://127.0.0.1:${cPort}/ws`);
  const bob = await open(b, 'bob', a.url);
  const onNode = (page, id) =>
    page.waitForFunction(
      (id) => document.querySelector('#state').dataset.state === 'connected' && document.querySelector('#node').textContent === id,
      id,
    );
  await onNode(alice, 'a');
  await onNode(bob, 'b');
  // Who is in #lobby, as each page lists it: "user on node", sorted.
  const members = (page) => page.$$eval('#people li', (lis) => lis.map((li) => li.textContent));
  const lists = (page, want) =>
    page
      .waitForFunction(
        (want) => JSON.stringify([...document.querySelectorAll('#people li')].map((li) => li.textContent)) === want,
        JSON.stringify(want),
        { timeout: 15000 },
      )
      .catch(async (e) => {
        throw new Error(`the member list shows ${JSON.stringify(await members(page))}, want ${JSON.stringify(want)}: ${e.message}`);
      });
  await Promise.all([lists(alice, ['alice on a', 'bob on b']), lists(bob, ['alice on a', 'bob on b'])]);

  const expected = [];
  const shown = (page) =>
    page.$$eval('#messages li', (lis) =>
      lis.map((li) => ({
        offset: Number(li.dataset.offset),
        line: `${li.querySelector('.who').textContent}: ${li.querySelector('.text').textContent}`,
      })),
    );
  const showsAll = (page) =>
    page.waitForFunction((n) => document.querySelectorAll('#messages li').length >= n, expected.length);
  const say = async (page, who, text) => {
    await page.fill('#text', text);
    await page.press('#text', 'Enter');
    expected.push(`${who}: ${text}`);
  };

  for (let i = 1; i <= 3; i++) {
    await say(alice, 'alice', `hello ${i}`);
    await Promise.all([showsAll(alice), showsAll(bob)]);
    await say(bob, 'bob', `hi ${i}, from b`);
    await Promise.all([showsAll(alice), showsAll(bob)]);
  }

  // Drain alice's node mid-conversation.
  const drained = a.stop('SIGTERM');
  await alice.waitForSelector('#state[data-state="disconnected"]');
  await lists(bob, ['bob on b']); // alice's entry on a went with the drain
  for (let i = 1; i <= 5; i++) await say(bob, 'bob', `while you were away ${i}`);
  await showsAll(bob);
  // Alice types while disconnected: the client keeps it and sends it on
  // reconnect, after what it recovers.
  await say(alice, 'alice', 'typed while offline');
  await alice.screenshot({ path: shot('alice-disconnected') });
  assert.equal((await drained).code, 0, 'the drained node exits cleanly');

  const c = await startNode({ port: cPort, env: env('c') });
  t.after(() => c.stop());
  await onNode(alice, 'c');
  await Promise.all([lists(alice, ['alice on c', 'bob on b']), lists(bob, ['alice on c', 'bob on b'])]);
  await alice.waitForFunction(() =>
    [...document.querySelectorAll('#notices li')].some((li) => li.textContent.endsWith('recovered 5 messages in #lobby')),
  );
  await Promise.all([showsAll(alice), showsAll(bob)]);
  await say(alice, 'alice', 'back, on c');
  await say(bob, 'bob', 'welcome back');
  await Promise.all([showsAll(alice), showsAll(bob)]);

  const [onAlice, onBob] = await Promise.all([shown(alice), shown(bob)]);
  await alice.screenshot({ path: shot('alice') });
  await bob.screenshot({ path: shot('bob') });
  assert.deepEqual(onAlice, onBob, 'both pages show the same messages in the same order');
  assert.deepEqual(
    onAlice.map((m) => m.line),
    expected,
    'every message once, in the order it was said',
  );
  assert.deepEqual(
    onAlice.map((m) => m.offset),
    expected.map((_, i) => i + 1),
  );
  assert.equal(await bob.textContent('#node'), 'b');
  assert.deepEqual(await members(alice), ['alice on c', 'bob on b']);
  assert.deepEqual(await members(bob), ['alice on c', 'bob on b']);
  assert.equal(await alice.textContent('#people-count'), '(2)');
  assert.deepEqual(pageErrors, []);
});

function shot(name) {
  const dir = path.join(artifacts, 'browser');
  mkdirSync(dir, { recursive: true });
  return path.join(dir, `${name}.png`);
}
