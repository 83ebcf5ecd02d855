import { describe, expect, it } from 'vitest';
import pino from 'pino';
import { CommandError, run } from '../../src/hypervisor/exec.js';
import { untilAnswered } from '../../src/node/libvirtLeftovers.js';

/** A recovery's context as untilAnswered sees it, with the warnings it logs collected. */
function ctx() {
  const warnings: string[] = [];
  const logger = pino({ level: 'warn' }, { write: (line: string) => void warnings.push((JSON.parse(line) as { what: string }).what) });
  return { ctx: { vm: { name: 'vm1' } as never, leaf: '20261130T000000Z', logger }, warnings };
}

/** A real command that runs past its timeout, as virsh does while libvirtd restores the domain. */
const timesOut = () => run('sleep', ['5'], { timeoutMs: 50 });

describe('untilAnswered (libvirt busy with a domain it restores)', () => {
  it('asks again while the question times out, and returns the answer', async () => {
    const { ctx: c, warnings } = ctx();
    let calls = 0;
    const answer = await untilAnswered(c, 'the state of vm1', async () => (++calls <= 2 ? (await timesOut()).stdout : 'running'));
    expect({ answer, calls, warnings }).toEqual({ answer: 'running', calls: 3, warnings: ['the state of vm1', 'the state of vm1'] });
  });

  it('throws any other failure at once', async () => {
    const { ctx: c } = ctx();
    let calls = 0;
    await expect(untilAnswered(c, 'x', async () => (++calls, (await run('false', [])).stdout))).rejects.toMatchObject({ name: 'CommandError', exitCode: 1 });
    expect(calls).toBe(1);
  });

  it('throws the timeout once the limit is past', async () => {
    const { ctx: c } = ctx();
    let calls = 0;
    const err = await untilAnswered(c, 'x', async () => (++calls, (await timesOut()).stdout), 120).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandError);
    expect((err as CommandError).timedOut).toBe(true);
    expect(calls).toBeGreaterThanOrEqual(2);
  });
});
