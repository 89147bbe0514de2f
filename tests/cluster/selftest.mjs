// The harness's own checkers, fed faults on purpose: each must say "bad" for the fault and "good"
// for the clean sequence, or the cluster cases could pass while asserting nothing. Run by run.sh
// before any engine starts (no network, no pushbox).
import assert from 'node:assert/strict';
import { alternation, ordered } from './lib/webhooks.mjs';
import { exactlyOnceInOrder } from './cases/partition.mjs';
import { World } from './lib/world.mjs';
import { Checks } from './lib/check.mjs';
import { viewsAgree } from './cases/presence.mjs';

const ev = (name, channel, user_id) => ({ name, channel, user_id });
let n = 0;
const t = (what, fn) => { fn(); n++; void what; };

t('alternation: clean', () => {
  const r = alternation([ev('channel_occupied', 'x'), ev('member_added', 'x', 'u'), ev('member_removed', 'x', 'u'), ev('channel_vacated', 'x'), ev('channel_occupied', 'x')]);
  assert.equal(r.violations.length, 0);
  assert.equal(r.last.get('c|x'), true);
});
t('alternation: vacated twice', () => {
  const r = alternation([ev('channel_occupied', 'x'), ev('channel_vacated', 'x'), ev('channel_vacated', 'x')]);
  assert.equal(r.violations.length, 1);
});
t('alternation: member_added twice (two nodes deciding first join)', () => {
  assert.equal(alternation([ev('member_added', 'p', 'u'), ev('member_added', 'p', 'u')]).violations.length, 1);
});
t('alternation: removed first', () => {
  assert.equal(alternation([ev('member_removed', 'p', 'u')]).violations.length, 1);
  assert.equal(alternation([ev('member_removed', 'p', 'u')], false).violations.length, 0);
});
t('alternation: repeat allowed only where dupOk says so', () => {
  const evs = [ev('member_added', 'p', 'u'), ev('member_removed', 'p', 'u'), ev('member_removed', 'p', 'u')];
  assert.equal(alternation(evs, true, (i) => i === 2).violations.length, 0);
  assert.equal(alternation(evs, true, (i) => i === 2).duplicates, 1);
  assert.equal(alternation(evs, true, () => false).violations.length, 1);
});

t('ordered: by time_ms, then arrival', () => {
  const evs = [{ name: 'b', time_ms: 20, idx: 0 }, { name: 'a', time_ms: 10, idx: 1 }, { name: 'c', time_ms: 20, idx: 2 }];
  assert.deepEqual(ordered(evs).map((e) => e.name), ['a', 'b', 'c']);
});

const sock = (ds) => ({ got: () => ds });
t('exactly once in order: clean', () => {
  assert.equal(exactlyOnceInOrder(sock([{ p: 'A', i: 0 }, { p: 'B', i: 0 }, { p: 'A', i: 1 }]), 'c', 'e', 'A', [0, 1]), '');
});
t('exactly once in order: missing, duplicate, out of order', () => {
  assert.match(exactlyOnceInOrder(sock([{ p: 'A', i: 0 }]), 'c', 'e', 'A', [0, 1]), /missing 1/);
  assert.match(exactlyOnceInOrder(sock([{ p: 'A', i: 0 }, { p: 'A', i: 0 }, { p: 'A', i: 1 }]), 'c', 'e', 'A', [0, 1]), /duplicates 0/);
  assert.match(exactlyOnceInOrder(sock([{ p: 'A', i: 1 }, { p: 'A', i: 0 }]), 'c', 'e', 'A', [0, 1]), /out of order/);
});

t('world: presence counts per user, distinct users', () => {
  const w = new World();
  w.join('presence-x', 's1', 'u1');
  w.join('presence-x', 's2', 'u1');
  w.join('presence-x', 's3', 'u2');
  assert.deepEqual(w.users('presence-x'), ['u1', 'u2']);
  assert.equal(w.count('presence-x', 'u1'), 2);
  w.leave('presence-x', 's1');
  assert.equal(w.count('presence-x', 'u1'), 1);
  assert.equal(w.subscriptions('presence-x'), 2);
});
t('observer views: a stale member is caught', () => {
  const w = new World();
  w.join('presence-x', 's1', 'u1');
  const s = { channels: new Map([['presence-x', {}]]), members: new Map([['presence-x', new Set(['u1', 'u9'])]]) };
  assert.equal(viewsAgree({ world: w }, 'presence-x', [s]), false);
  s.members.get('presence-x').delete('u9');
  assert.equal(viewsAgree({ world: w }, 'presence-x', [s]), true);
});
t('checks: a case with no check is not green', () => {
  const c = new Checks('x');
  assert.equal(c.green, false);
  c.ok(true, 'y');
  assert.equal(c.green, true);
  c.equal([1], [2], 'z');
  assert.equal(c.green, false);
});
console.log(`harness self-test: ${n} passed, 0 failed`);
