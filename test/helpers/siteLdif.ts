/**
 * A large site as LDIF for slapadd: `vms` VMs spread round-robin over
 * `nodes` nodes, each VM with one disk and an ou=backup container, all in the
 * sample tree's pool (whose settings apply) and under the global schedule.
 * Names: vm-00001…, node-01.bench.example.com….
 */
import { writeFile } from 'node:fs/promises';

export const SITE_VMS_DN = 'ou=virtual machines,ou=virtualization,ou=services,o=stepping-stone,c=ch';
export const SITE_POOL = '0f83f084-8080-413e-b558-b678e504836e';

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
      `dn: ${dn}`, 'objectClass: top', 'objectClass: sstVirtualizationVirtualMachine', `sstVirtualMachine: ${name}`,
      `sstNode: ${siteNodeName(i % nodes)}`, `sstVirtualMachinePool: ${SITE_POOL}`, 'sstVirtualMachineType: persistent',
      'sstType: kvm', 'sstMemory: 33554432', 'sstVCPU: 1', '',
      `dn: ou=devices,${dn}`, 'objectClass: top', 'objectClass: organizationalUnit', 'ou: devices', '',
      `dn: sstDisk=vda,ou=devices,${dn}`, 'objectClass: top', 'objectClass: sstVirtualizationVirtualMachineDisk', 'sstDisk: vda',
      'sstDevice: disk', 'sstType: file', `sstSourceFile: /var/virtualization/vm-persistent/${SITE_POOL}/${name}-vda.qcow2`,
      'sstDriverName: qemu', 'sstDriverType: qcow2', 'sstTargetBus: virtio', '',
      `dn: ou=backup,${dn}`, 'objectClass: top', 'objectClass: organizationalUnit', 'ou: backup', '',
    );
  }
  return out.join('\n');
}

export async function writeSiteLdif(file: string, vms: number, nodes: number): Promise<string> {
  await writeFile(file, siteLdif(vms, nodes));
  return file;
}
