import { readdir, readFile, readlink, realpath } from 'node:fs/promises';
import path from 'node:path';

/**
 * How far the processes that have `file` open got in it: the largest offset
 * of any of its open descriptors (`pos` in /proc/<pid>/fdinfo), undefined
 * while none has it open.
 *
 * Why: `virsh restore` runs inside libvirtd and QEMU, and libvirt 9.0 reports
 * no job for it (`virsh domjobinfo` waits until the restore is over, found by
 * experiment). The state file, though, is read front to back through one
 * descriptor that libvirtd opens and hands to QEMU: its offset is the
 * restore's progress. Read only, nothing of those processes is touched.
 */
export async function fileReadPosition(file: string, procRoot = '/proc'): Promise<number | undefined> {
  const target = await realpath(file).catch(() => path.resolve(file));
  const pids = (await readdir(procRoot).catch(() => [] as string[])).filter((p) => /^\d+$/.test(p));
  // Processes come and go, and others' descriptors may be closed meanwhile: what cannot be read is skipped.
  const positions = await Promise.all(pids.map(async (pid) => {
    const fdDir = path.join(procRoot, pid, 'fd');
    const found: number[] = [];
    for (const fd of await readdir(fdDir).catch(() => [] as string[])) {
      if ((await readlink(path.join(fdDir, fd)).catch(() => undefined)) !== target) continue;
      const info = await readFile(path.join(procRoot, pid, 'fdinfo', fd), 'utf8').catch(() => '');
      const pos = /^pos:\s*(\d+)/m.exec(info)?.[1];
      if (pos !== undefined) found.push(Number(pos));
    }
    return found;
  }));
  const all = positions.flat();
  return all.length > 0 ? Math.max(...all) : undefined;
}
