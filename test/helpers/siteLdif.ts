/**
 * A large site as LDIF for slapadd: `vms` VMs spread round-robin over
 * `nodes` nodes, each VM with one disk and an ou=backup container, all in the
 * sample tree's pool (whose settings apply) and under the global schedule.
 * Names: vm-00001…, node-01.bench.example.com….
 */
import { writeFile } from 'node:fs/promises';
import { devicesEntryLines, diskEntryLines, vmEntryLines } from './directoryEntries.js';

export const SITE_VMS_DN = 'ou=virtual machines,ou=virtualization,ou=services,o=stepping-stone,c=ch';
export const SITE_POOL = '0f83f084-8080-413e-b558-b678e504836e';
/** The storage pool the disks live in (another UUID than the VM pool, as in a real installation). */
export const SITE_STORAGE_POOL = 'f9dc3c13-5e3a-4b1c-9d2e-7a6b5c4d3e21';

export function siteVmName(i: number): string {
  return `vm-${String(i + 1).padStart(5, '0')}`;
}

export function siteNodeName(i: number): string {
  return `node-${String(i + 1).padStart(2, '0')}.bench.example.com`;
}

export function siteLdif(vms: number, nodes: number): string {
  const out: string[] = [];
  for (let i = 0; i < vms; i++) {
    const name = siteVmName(i);
    const dn = `sstVirtualMachine=${name},${SITE_VMS_DN}`;
    out.push(
      ...vmEntryLines(dn, { name, node: siteNodeName(i % nodes), pool: SITE_POOL }), '',
      ...devicesEntryLines(dn), '',
      ...diskEntryLines(dn, { target: 'vda', sourceFile: `/var/virtualization/vm-persistent/${SITE_STORAGE_POOL}/${name}-vda.qcow2` }), '',
      `dn: ou=backup,${dn}`, 'objectClass: top', 'objectClass: organizationalUnit', 'ou: backup', '',
    );
  }
  return out.join('\n');
}

export async function writeSiteLdif(file: string, vms: number, nodes: number): Promise<string> {
  await writeFile(file, siteLdif(vms, nodes));
  return file;
}
