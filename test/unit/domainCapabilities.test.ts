import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseDomainCapabilities } from '../../src/hypervisor/domainCapabilities.js';

describe('parseDomainCapabilities', () => {
  it('reads the emulator of captured `virsh domcapabilities` output (libvirt 9.0, no firmware offered)', () => {
    const xml = readFileSync(new URL('../fixtures/domcapabilities-kvm-x86_64.xml', import.meta.url), 'utf8');
    expect(parseDomainCapabilities(xml)).toEqual({ emulator: '/usr/bin/qemu-system-x86_64', firmware: [] });
  });

  it('lists the firmware files of the loader, not the values of its enums', () => {
    const xml = `<domainCapabilities><path>/usr/libexec/qemu-kvm</path><os supported='yes'><loader supported='yes'>
      <value>/usr/share/OVMF/OVMF_CODE.fd</value><value>/usr/share/OVMF/OVMF_CODE.secboot.fd</value>
      <enum name='type'><value>rom</value><value>pflash</value></enum></loader></os></domainCapabilities>`;
    expect(parseDomainCapabilities(xml)).toEqual({ emulator: '/usr/libexec/qemu-kvm', firmware: ['/usr/share/OVMF/OVMF_CODE.fd', '/usr/share/OVMF/OVMF_CODE.secboot.fd'] });
  });

  it('fails when no emulator is named', () => {
    expect(() => parseDomainCapabilities('<domainCapabilities/>')).toThrow(/no emulator/);
  });
});
