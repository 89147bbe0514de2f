// A case's findings: every check records pass or fail with the exact symptom, so the summary can
// say what broke. A case passes only if it made at least one check and none failed.
export class Checks {
  constructor(name) {
    this.name = name;
    this.passed = 0;
    this.failures = [];
    this.notes = [];
  }

  ok(cond, what, detail = '') {
    if (cond) this.passed++;
    else this.failures.push(detail ? `${what}: ${detail}` : what);
    return !!cond;
  }

  equal(got, want, what) {
    const g = JSON.stringify(got);
    const w = JSON.stringify(want);
    return this.ok(g === w, what, `got ${g}, want ${w}`);
  }

  fail(what) { this.failures.push(what); }
  note(what) { this.notes.push(what); }

  get green() { return this.failures.length === 0 && this.passed > 0; }
}

/** Resolve when pred() is truthy, else false after `ms` (no throw: the caller checks). */
export async function within(ms, pred, interval = 50) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** Seeded PRNG (mulberry32): the same SEED gives the same joins and leaves. */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
