import os from 'node:os';
import path from 'node:path';
import { readdir, writeFile, mkdtemp, rm } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { startSlapd } from '../helpers/slapd.js';

async function slapdDirs(): Promise<string[]> {
  return (await readdir(os.tmpdir())).filter((n) => n.startsWith('stoney-slapd-'));
}

describe('test/helpers/slapd.ts', () => {
  it('fails loudly (with the tool output) when the data cannot be loaded, and leaves nothing behind', async () => {
    const scratch = await mkdtemp(path.join(os.tmpdir(), 'stoney-bad-ldif-'));
    try {
      const bad = path.join(scratch, 'bad.ldif');
      // A VM without the original schema's mandatory attributes (sstNode, sstMemory, …):
      // slapadd's schema check must refuse it.
      await writeFile(bad, 'dn: sstVirtualMachine=broken,ou=virtual machines,ou=virtualization,ou=services,o=stepping-stone,c=ch\nobjectClass: sstVirtualizationVirtualMachine\nsstVirtualMachine: broken\n');
      // Temp dirs go to os.tmpdir(), i.e. $TMPDIR: point it at the scratch dir to see what is left.
      const saved = process.env['TMPDIR'];
      process.env['TMPDIR'] = scratch;
      try {
        await expect(startSlapd({ ldifFiles: [bad] })).rejects.toThrow(/slapadd .*failed[\s\S]*sstVirtualizationVirtualMachine.* requires attribute/);
      } finally {
        if (saved === undefined) delete process.env['TMPDIR'];
        else process.env['TMPDIR'] = saved;
      }
      expect(await readdir(scratch)).toEqual(['bad.ldif']);
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  });

  it('restart keeps data and port; stop removes everything', async () => {
    const s = await startSlapd({ sampleTree: false });
    const { url, dir } = s;
    const pid = s.pid;
    await s.restart();
    expect(s.url).toBe(url);
    expect(s.pid).not.toBe(pid);
    await s.stop();
    expect(s.pid).toBeUndefined();
    expect((await slapdDirs()).includes(path.basename(dir))).toBe(false);
  });
});
