/**
 * LDIF records of VM, disk and interface entries as an installation of the
 * original stoney cloud holds them: every attribute the original schema makes
 * mandatory (ldif/stoney-original-schema.ldif) is there, so slapd's schema
 * check accepts them exactly as it accepts a real directory's entries.
 * Each function returns the record's lines (no blank line at the end).
 */

export interface VmEntryOptions {
  /** sstVirtualMachine, the libvirt domain name */
  name: string;
  node: string;
  /** the VM pool's UUID (sstVirtualMachinePool) */
  pool: string;
  /** guest RAM in bytes (default 32 MiB) */
  memoryBytes?: number;
  vcpu?: number;
  /** sstVirtualMachineType; null leaves it out (it is optional in the original) */
  vmType?: string | null;
  /** sstStatus (default running) */
  status?: string;
  description?: string;
}

/** The VM entry itself (sstVirtualizationVirtualMachine with its devices class). */
export function vmEntryLines(dn: string, o: VmEntryOptions): string[] {
  const vmType = o.vmType === undefined ? 'persistent' : o.vmType;
  return [
    `dn: ${dn}`,
    'objectClass: top',
    'objectClass: sstVirtualizationVirtualMachine',
    'objectClass: sstVirtualizationVirtualMachineDevices',
    `sstVirtualMachine: ${o.name}`,
    `sstDisplayName: ${o.name}`,
    `sstNode: ${o.node}`,
    `sstVirtualMachinePool: ${o.pool}`,
    ...(vmType === null ? [] : [`sstVirtualMachineType: ${vmType}`]),
    'sstType: kvm',
    `sstStatus: ${o.status ?? 'running'}`,
    `sstMemory: ${o.memoryBytes ?? 32 * 1024 * 1024}`,
    `sstVCPU: ${o.vcpu ?? 1}`,
    'sstClockOffset: utc',
    'sstOnPowerOff: destroy',
    'sstOnReboot: restart',
    'sstOnCrash: destroy',
    'sstOSArchitecture: x86_64',
    'sstOSMachine: pc',
    'sstOSType: hvm',
    'sstOSBootDevice: hd',
    'sstEmulator: /usr/bin/qemu-system-x86_64',
    'sstMemBalloon: none',
    ...(o.description === undefined ? [] : [`description: ${o.description}`]),
  ];
}

export interface DiskEntryOptions {
  target: string;
  sourceFile: string;
  device?: string;
  bus?: string;
  driverType?: string;
}

/** A disk entry (sstVirtualizationVirtualMachineDisk), below the VM's ou=devices. */
export function diskEntryLines(vmDn: string, o: DiskEntryOptions): string[] {
  return [
    `dn: sstDisk=${o.target},ou=devices,${vmDn}`,
    'objectClass: top',
    'objectClass: sstVirtualizationVirtualMachineDisk',
    `sstDisk: ${o.target}`,
    `sstDevice: ${o.device ?? 'disk'}`,
    'sstType: file',
    `sstSourceFile: ${o.sourceFile}`,
    'sstDriverName: qemu',
    `sstDriverType: ${o.driverType ?? 'qcow2'}`,
    `sstTargetBus: ${o.bus ?? 'virtio'}`,
  ];
}

/** A network interface entry (sstVirtualizationVirtualMachineInterface), below the VM's ou=devices. */
export function interfaceEntryLines(vmDn: string, name: string, mac: string): string[] {
  return [
    `dn: sstInterface=${name},ou=devices,${vmDn}`,
    'objectClass: top',
    'objectClass: sstVirtualizationVirtualMachineInterface',
    `sstInterface: ${name}`,
    `sstMacAddress: ${mac}`,
    'sstModelType: virtio',
    'sstSourceBridge: vmbr0',
    'sstType: bridge',
  ];
}

/** The VM's ou=devices container. */
export function devicesEntryLines(vmDn: string): string[] {
  return [`dn: ou=devices,${vmDn}`, 'objectClass: top', 'objectClass: organizationalUnit', 'ou: devices'];
}

/** Records joined as one LDIF text (blank line between records, newline at the end). */
export function ldifText(...records: string[][]): string {
  return records.map((r) => r.join('\n') + '\n').join('\n');
}
