import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { NO_STATE_MARKER } from '../../src/domain/layout.js';
import { ldapAdd } from './slapd.js';
import { virsh, type TinyVm } from './libvirt.js';
import { vmDn, type World } from './world.js';

/**
 * A finished backup of a shut-off VM exactly as the original (Perl)
 * implementation left it: `<root>/vm-persistent/<storage-pool>/<vm>/<leaf>/`
 * holding `<file>.<leaf>` (the placeholder state, the XML, the VM's LDIF, the
 * disk images), no manifest, and a finished leaf with the original's
 * execution times. Returns the backup directory.
 */
export async function writeOriginalBackup(w: World, vm: TinyVm, leaf: string): Promise<string> {
  const layout = w.layoutOf(vm.name, leaf);
  await mkdir(layout.backupDir, { recursive: true });
  await writeFile(layout.backupPath(`${vm.name}.state`), `${NO_STATE_MARKER}\n`);
  await writeFile(layout.backupPath(`${vm.name}.xml`), await virsh.dumpXml(vm.name, { inactive: true }));
  await writeFile(layout.backupPath(`${vm.name}.ldif`), await w.directory.exportVmLdif(vm.name));
  for (const d of vm.disks) await copyFile(d.path, layout.backupPath(path.basename(d.path)));
  await ldapAdd(w.slapd, `dn: ou=${leaf},ou=backup,${vmDn(vm.name)}
objectClass: top
objectClass: organizationalUnit
objectClass: sstProvisioning
ou: ${leaf}
sstProvisioningMode: finished
sstProvisioningState: ${leaf.slice(0, 11)}5012Z
sstProvisioningExecutionDate: 0
sstProvisioningReturnValue: 0
sstProvisioningExecutionTime: snapshot: 5.108
sstProvisioningExecutionTime: merge: 331.901
sstProvisioningExecutionTime: retain: 893.729
`);
  return layout.backupDir;
}
