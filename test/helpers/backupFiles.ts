import { copyFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { virsh } from './libvirt.js';
import { stripBackingStores } from '../../src/hypervisor/domainXml.js';
import type { BackupLayout } from '../../src/domain/layout.js';

/**
 * Put a backup's disk images in place of the live ones and `virsh restore`
 * its state file, the way the runbook does (with the embedded XML minus
 * `<backingStore/>`): what the backup alone brings back.
 */
export async function restoreFromBackupFiles(vm: string, layout: BackupLayout, images: string[], scratchDir: string): Promise<void> {
  await virsh.destroy(vm);
  for (const img of images) {
    await rm(img);
    await copyFile(layout.backupPath(path.basename(img)), img);
  }
  const xml = path.join(scratchDir, `${vm}.restore.xml`);
  await writeFile(xml, stripBackingStores(await virsh.saveImageXml(layout.backupPath(`${vm}.state`))));
  await virsh.restore(layout.backupPath(`${vm}.state`), xml);
}
