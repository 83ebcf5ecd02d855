import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { createTinyVm, LIBVIRT_URI, removeVm, requireLibvirt, virsh } from '../helpers/libvirt.js';
import { Virsh } from '../../src/hypervisor/Virsh.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';
import { judgeProgress, type ProgressJudge } from '../../src/hypervisor/jobProgress.js';

/**
 * `virsh save` and the live snapshot's memory dump watched by libvirt's job
 * progress (domjobinfo) instead of a wall clock, `virsh restore` by how far the
 * state file has been read (libvirt reports no job for a restore), on a real VM with 384 MiB of random data in its RAM (a save of
 * about half a second here). A stall cannot be produced on demand, so one
 * test injects the stall verdict (stallAtOnce); the abort and the wait for libvirt are real.
 */
let dir: string;
let name: string;
beforeAll(async () => {
  await requireLibvirt();
  dir = await mkdtemp('/var/tmp/stoney-longjob-');
  const ram = path.join(dir, 'ram.bin');
  const f = await open(ram, 'w');
  for (let i = 0; i < 384; i++) await f.write(randomBytes(1024 * 1024));
  await f.close();
  name = `sbtlj${process.pid.toString(36)}`;
  await createTinyVm({ name, imageDir: dir, running: true, memoryMiB: 512, ramLoader: ram });
});
afterAll(async () => {
  await removeVm(name);
  await rm(dir, { recursive: true, force: true });
});

/** Every sample of the job seen, for the test to check one was looked at. */
const samples: boolean[] = [];
/** The injected fault: the first look at a running job finds it stalled. */
function stallAtOnce(): ProgressJudge {
  return (watch, sample) => {
    samples.push(sample.active);
    return { watch, verdict: sample.active ? 'stalled' : 'ended' };
  };
}

describe('a save watched by its progress', () => {
  it('that stalls is aborted, and fails only once libvirt runs no job; the VM runs on and no state file is left', async () => {
    const file = path.join(dir, 'stalled.state');
    const err = await virsh.save(name, file, { pollMs: 50, judge: stallAtOnce() }).then(() => undefined, (e: unknown) => e);
    expect(err).toMatchObject({ code: ReturnCode.cannotSaveMachineState, message: expect.stringMatching(/made no progress.*aborted, libvirt runs no job/) });
    expect(samples.splice(0)).toContain(true);
    expect(await virsh.domainJobActive(name)).toBe(false);
    expect(await virsh.domState(name)).toBe('running');
    expect(await readdir(dir)).not.toContain('stalled.state');
  });

  it('that progresses runs to its end', async () => {
    const file = path.join(dir, 'ok.state');
    const verdicts: string[] = [];
    const recording: ProgressJudge = (watch, sample, now, stallMs) => {
      const r = judgeProgress(watch, sample, now, stallMs);
      verdicts.push(r.verdict);
      return r;
    };
    await virsh.save(name, file, { pollMs: 50, judge: recording });
    expect(await virsh.domState(name)).toBe('shut off');
    expect(verdicts).not.toContain('stalled');
    expect(verdicts).toContain('progressing');
    await virsh.restore(file);
    expect(await virsh.domState(name)).toBe('running');
  });
});

describe('a live snapshot watched by its progress', () => {
  it('that stalls is aborted: the guest runs on, no memory file is left, libvirt runs no job', async () => {
    const file = path.join(dir, 'live.state');
    const err = await virsh.snapshotLive(name, file, [], ['vda'], { pollMs: 50, judge: stallAtOnce() }).then(() => undefined, (e: unknown) => e);
    expect(err).toMatchObject({ code: ReturnCode.cannotSaveMachineState, message: expect.stringMatching(/live snapshot.*made no progress.*aborted/) });
    expect(samples.splice(0)).toContain(true);
    expect(await virsh.domainJobActive(name)).toBe(false);
    expect(await virsh.domState(name)).toBe('running');
    expect(await readdir(dir)).not.toContain('live.state');
  });
});

describe('a restore watched by its progress', () => {
  it('that reads on runs to its end, although every other command of that Virsh times out after 200 ms (the fixed timeout restores had)', async () => {
    const file = path.join(dir, 'restore-ok.state');
    await virsh.save(name, file);
    const positions: (number | undefined)[] = [];
    const recording: ProgressJudge = (watch, sample, now, stallMs) => {
      positions.push(sample.progress);
      return judgeProgress(watch, sample, now, stallMs);
    };
    const hurried = new Virsh(LIBVIRT_URI, undefined, 200);
    const t0 = Date.now();
    await hurried.restore(file, undefined, { pollMs: 50, stallMs: 5_000, judge: recording });
    expect(Date.now() - t0).toBeGreaterThan(200);
    expect(await virsh.domState(name)).toBe('running');
    // It saw QEMU read the state file (384 MiB of it is guest RAM).
    expect(positions.some((p) => p !== undefined && p > 32 * 1024 * 1024)).toBe(true);
    await rm(file);
  });

  it('that reads nothing for the stall limit is ended: the domain being restored is destroyed, 21, the state file left as it was', async () => {
    const file = path.join(dir, 'restore-stuck.state');
    await virsh.save(name, file);
    const size = (await stat(file)).size;
    const pidFile = `/run/libvirt/qemu/${name}.pid`;
    await expect(stat(pidFile)).rejects.toThrow(/ENOENT/);
    const restoring = virsh.restore(file, undefined, { pollMs: 100, stallMs: 2_000 }).then(() => undefined, (e: unknown) => e);
    // A QEMU that reads no more: stopped (SIGSTOP) as soon as it exists. A real stall, not an injected verdict.
    let pid: number | undefined;
    for (const end = Date.now() + 30_000; pid === undefined && Date.now() < end; ) {
      const p = Number(await readFile(pidFile, 'utf8').catch(() => ''));
      const cmdline = p > 0 ? await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '') : '';
      if (cmdline.includes(`guest=${name}`)) pid = p;
      else await new Promise((r) => setTimeout(r, 10));
    }
    expect(pid).toBeDefined();
    process.kill(pid!, 'SIGSTOP');
    const err = await restoring;
    expect(err).toMatchObject({ code: ReturnCode.cannotRestoreMachine, message: expect.stringMatching(/virsh restore of .* made no progress for 2000 ms.*destroyed/) });
    expect(await virsh.domState(name)).toBe('shut off');
    expect((await stat(file)).size).toBe(size);
    // The state file is intact: the VM comes back from it.
    await virsh.restore(file);
    expect(await virsh.domState(name)).toBe('running');
    await rm(file);
  });
});
