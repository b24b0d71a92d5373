import { describe, expect, it } from 'vitest';
import { type Evictable, lru, tinyLfu } from '../packages/sandpool/dist/host/slots/eviction.js';
import { keyHash } from '../packages/sandpool/dist/host/slots/frequency.js';

/** An idle worker as a policy sees it: its key and when it was last used. */
function idle(key: string, lastUsed: number): Evictable & { key: string } {
  return { key, keyHash: keyHash(key), lastUsed };
}

describe('eviction policies, alone', () => {
  it('lru picks the least recently used, whatever was asked for how often', () => {
    const policy = lru();
    for (let i = 0; i < 100; i++) policy.touch(keyHash('hot'));
    const victim = policy.victim([idle('hot', 1), idle('cold', 2), idle('warm', 3)]);
    expect(victim?.key).toBe('hot');
  });

  it('tinylfu picks the key asked for least often lately, the least recently used among equals', () => {
    const policy = tinyLfu(64);
    for (let i = 0; i < 50; i++) policy.touch(keyHash('hot'));
    for (let i = 0; i < 5; i++) policy.touch(keyHash('warm'));
    policy.touch(keyHash('once-a'));
    policy.touch(keyHash('once-b'));
    const candidates = [idle('hot', 1), idle('warm', 2), idle('once-b', 4), idle('once-a', 3)];
    expect(policy.victim(candidates)?.key).toBe('once-a');
    expect(policy.victim(candidates.filter((entry) => !entry.key.startsWith('once')))?.key).toBe('warm');
  });

  it('tinylfu forgets: popularity fades as new keys are counted, so an old favourite can go', () => {
    const policy = tinyLfu(8);
    for (let i = 0; i < 15; i++) policy.touch(keyHash('old-favourite'));
    // Enough other increments to age the sketch several times (each halves every counter).
    for (let i = 0; i < 2_000; i++) policy.touch(keyHash(`scan-${i % 40}`));
    for (let i = 0; i < 15; i++) policy.touch(keyHash('new-favourite'));
    const victim = policy.victim([idle('new-favourite', 1), idle('old-favourite', 2)]);
    expect(victim?.key).toBe('old-favourite');
  });

  it('either policy answers null with no candidate', () => {
    expect(lru().victim([])).toBeNull();
    expect(tinyLfu(4).victim([])).toBeNull();
  });
});
