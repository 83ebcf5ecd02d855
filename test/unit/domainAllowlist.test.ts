import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { allowlistedDomainXml, type DomainAllowlistContext } from '../../src/domain/restore/domainAllowlist.js';
import { BackupError } from '../../src/domain/errors.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';
import { parseDomainDisks } from '../../src/hypervisor/domainXml.js';

// Written by libvirt 9.0 (`virsh dumpxml --inactive`), disks under /tmp/exp/img.
const base = readFileSync(new URL('../fixtures/dumpxml-inactive.xml', import.meta.url), 'utf8');
const ctx: DomainAllowlistContext = {
  imageRoots: ['/tmp/exp/img'],
  liveXml: undefined,
  emulator: '/usr/bin/qemu-system-x86_64',
  firmware: ['/usr/share/OVMF/OVMF_CODE.fd'],
  name: 'exp1',
};

/** The fixture with `extra` added just before </devices> (or `where`). */
function withDevice(extra: string, where = '</devices>'): string {
  return base.replace(where, `${extra}\n  ${where}`);
}

function refusal(xml: string, c: Partial<DomainAllowlistContext> = {}): string {
  try {
    allowlistedDomainXml(xml, { ...ctx, ...c });
  } catch (err) {
    expect(err).toBeInstanceOf(BackupError);
    expect((err as BackupError).code).toBe(ReturnCode.unsafeDomainDefinition);
    return (err as BackupError).message;
  }
  throw new Error('the definition was accepted');
}

describe('the restore allowlist of domain definitions', () => {
  it('accepts what libvirt writes for a plain VM and keeps its disks, memory and devices', () => {
    const out = allowlistedDomainXml(base, ctx);
    expect(parseDomainDisks(out).map((d) => [d.target, d.source, d.format])).toEqual([
      ['vda', '/tmp/exp/img/d1.qcow2', 'qcow2'],
      ['vdb', '/tmp/exp/img/d2.qcow2', 'qcow2'],
    ]);
    expect(out).toContain("<memory unit='KiB'>32768</memory>");
    expect(out).toContain("<controller type='usb' index='0' model='piix3-uhci'>");
    expect(out).toContain("<audio id='1' type='none'/>");
  });

  it('pins the emulator to the one given (the live or the node one)', () => {
    const evil = base.replace('<emulator>/usr/bin/qemu-system-x86_64</emulator>', '<emulator>/tmp/evil/qemu</emulator>');
    expect(allowlistedDomainXml(evil, ctx)).toContain('<emulator>/usr/bin/qemu-system-x86_64</emulator>');
    expect(allowlistedDomainXml(evil, ctx)).not.toContain('/tmp/evil');
  });

  const hostile: [string, string, RegExp][] = [
    ['a block disk on /dev/sda', withDevice("<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/sda'/><target dev='vdc' bus='virtio'/></disk>"), /type="block"/],
    ['a cdrom on /etc/shadow', withDevice("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/etc/shadow'/><target dev='hdc' bus='ide'/><readonly/></disk>"), /\/etc\/shadow/],
    ['a disk escaping the root with ..', base.replace('/tmp/exp/img/d1.qcow2', '/tmp/exp/img/../../../etc/shadow'), /not a path inside/],
    ['a disk on the root itself', base.replace('/tmp/exp/img/d1.qcow2', '/tmp/exp/img'), /not a path inside/],
    ['a disk on a relative path', base.replace('/tmp/exp/img/d1.qcow2', 'img/d1.qcow2'), /not a path inside/],
    ['a disk in a sibling of the root', base.replace('/tmp/exp/img/d1.qcow2', '/tmp/exp/img2/d1.qcow2'), /not a path inside/],
    ['a network disk (nbd)', withDevice("<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd' name='x'><host name='10.0.0.1' port='10809'/></source><target dev='vdc' bus='virtio'/></disk>"), /type="network"/],
    ['a volume disk', withDevice("<disk type='volume' device='disk'><source pool='default' volume='x'/><target dev='vdc' bus='virtio'/></disk>"), /type="volume"/],
    ['a directory disk', withDevice("<disk type='dir' device='floppy'><source dir='/root'/><target dev='fda' bus='fdc'/></disk>"), /type="dir"/],
    ['a lun passthrough with rawio', withDevice("<disk type='file' device='lun' rawio='yes'><source file='/tmp/exp/img/x'/><target dev='sdb' bus='scsi'/></disk>"), /rawio|device="lun"/],
    ['a file disk with dev=', withDevice("<disk type='file' device='disk'><source dev='/dev/sda'/><target dev='vdc' bus='virtio'/></disk>"), /attribute dev/],
    ['a disk source with a seclabel', base.replace("<source file='/tmp/exp/img/d1.qcow2'/>", "<source file='/tmp/exp/img/d1.qcow2'><seclabel model='dac' relabel='no'/></source>"), /seclabel/],
    ['a disk with a vmdk driver', base.replace("<driver name='qemu' type='qcow2'/>", "<driver name='qemu' type='vmdk'/>"), /vmdk/],
    ['a hostdev', withDevice("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/></source></hostdev>"), /hostdev/],
    ['a filesystem of /', withDevice("<filesystem type='mount' accessmode='passthrough'><source dir='/'/><target dir='host'/></filesystem>"), /filesystem/],
    ['qemu:commandline', base.replace("<domain type='kvm'>", "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>").replace('</devices>', "</devices>\n  <qemu:commandline><qemu:arg value='-device'/><qemu:arg value='loader,file=/etc/shadow'/></qemu:commandline>"), /qemu:commandline/],
    ['qemu:commandline under another prefix', base.replace("<domain type='kvm'>", "<domain type='kvm' xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'>").replace('</devices>', "</devices>\n  <q:commandline><q:arg value='-S'/></q:commandline>"), /namespace|q:commandline/],
    ['a default namespace', base.replace("<domain type='kvm'>", "<domain type='kvm' xmlns='http://libvirt.org/schemas/domain/qemu/1.0'>"), /namespace/],
    ['an entity declaration', `<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/shadow">]>\n${base}`, /not plain libvirt XML/],
    ['a comment hiding a device', withDevice("<!-- --><hostdev/>"), /not plain libvirt XML/],
    ['CDATA', base.replace('<name>exp1</name>', '<name><![CDATA[exp1]]></name>'), /not plain libvirt XML/],
    ['a processing instruction', withDevice('<?xml-stylesheet href="x"?>'), /not plain libvirt XML/],
    ['an undefined entity', base.replace('<name>exp1</name>', '<name>&xxe;</name>'), /not plain libvirt XML/],
    ['two root elements', `${base}<domain type='kvm'/>`, /not plain libvirt XML/],
    ['an unclosed element', base.replace('</domain>', ''), /not plain libvirt XML/],
    ['a duplicate attribute', base.replace("<disk type='file' device='disk'>", "<disk type='file' type='block' device='disk'>"), /not plain libvirt XML/],
    ['a serial port into /etc/cron.d', withDevice("<serial type='file'><source path='/etc/cron.d/x'/><target port='0'/></serial>"), /\/etc\/cron.d/],
    ['a serial port on a host device', withDevice("<serial type='dev'><source path='/dev/ttyS0'/><target port='0'/></serial>"), /type="dev"/],
    ['a serial port on the network', withDevice("<serial type='tcp'><source mode='bind' host='0.0.0.0' service='2445'/><target port='0'/></serial>"), /type="tcp"/],
    ['a console log into /root', withDevice("<console type='pty'><target type='serial' port='0'/><log file='/root/.bashrc' append='on'/></console>"), /\/root\/.bashrc/],
    ['a channel socket outside the roots', withDevice("<channel type='unix'><source mode='bind' path='/run/evil.sock'/><target type='virtio' name='x'/></channel>"), /\/run\/evil.sock/],
    ['an ethernet NIC with a script', withDevice("<interface type='ethernet'><script path='/tmp/x.sh'/></interface>"), /type="ethernet"|script/],
    ['a bridge NIC with a script', withDevice("<interface type='bridge'><source bridge='br0'/><script path='/tmp/x.sh'/></interface>"), /script/],
    ['a direct (macvtap) NIC', withDevice("<interface type='direct'><source dev='eth0' mode='passthrough'/></interface>"), /type="direct"/],
    ['a vhost-user NIC', withDevice("<interface type='vhostuser'><source type='unix' path='/run/x' mode='server'/></interface>"), /vhostuser/],
    ['a NIC taking over a host tap', withDevice("<interface type='bridge'><source bridge='br0'/><target dev='tap0' managed='no'/></interface>"), /managed/],
    ['a NIC with backend device paths', withDevice("<interface type='network'><source network='default'/><backend tap='/dev/sda' vhost='/dev/sdb'/></interface>"), /backend/],
    ['a NIC option ROM from /etc', withDevice("<interface type='network'><source network='default'/><rom file='/etc/shadow'/></interface>"), /\/etc\/shadow/],
    ['an evdev input', withDevice("<input type='evdev'><source dev='/dev/input/event0'/></input>"), /evdev/],
    ['a passthrough input', withDevice("<input type='passthrough' bus='virtio'><source evdev='/dev/input/event1'/></input>"), /passthrough/],
    ['VNC on a socket path', withDevice("<graphics type='vnc' socket='/etc/passwd'/>"), /socket/],
    ['VNC listen on a socket', withDevice("<graphics type='vnc'><listen type='socket' socket='/tmp/x'/></graphics>"), /socket/],
    ['SDL with an xauth file', withDevice("<graphics type='sdl' display=':0' xauth='/root/.Xauthority'/>"), /sdl/],
    ['an audio backend writing a file', base.replace("<audio id='1' type='none'/>", "<audio id='1' type='file' path='/etc/motd'/>"), /type="file"/],
    ['an rng reading a disk', withDevice("<rng model='virtio'><backend model='random'>/dev/sda</backend></rng>"), /\/dev\/sda/],
    ['an rng on an egd socket', withDevice("<rng model='virtio'><backend model='egd' type='tcp'><source mode='connect' host='1.2.3.4' service='1'/></backend></rng>"), /egd/],
    ['a TPM passthrough', withDevice("<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>"), /tpm/],
    ['a smartcard passthrough', withDevice("<smartcard mode='passthrough' type='tcp'><source mode='bind' host='0' service='1'/></smartcard>"), /smartcard/],
    ['a shared memory device', withDevice("<shmem name='x'><model type='ivshmem-plain'/></shmem>"), /shmem/],
    ['an nvdimm backed by a host file', withDevice("<memory model='nvdimm'><source><path>/etc/shadow</path></source><target><size unit='KiB'>1024</size></target></memory>"), /memory/],
    ['a USB redirection over TCP', withDevice("<redirdev bus='usb' type='tcp'><source mode='connect' host='1.2.3.4' service='4000'/></redirdev>"), /tcp/],
    ['a kernel from /boot of the host', base.replace('<boot dev=\'hd\'/>', "<kernel>/boot/vmlinuz</kernel><initrd>/boot/initrd.img</initrd>"), /\/boot\/vmlinuz/],
    ['an initrd outside the roots', base.replace('<boot dev=\'hd\'/>', "<initrd>/etc/shadow</initrd>"), /\/etc\/shadow/],
    ['a loader reading /etc/shadow', base.replace('<boot dev=\'hd\'/>', "<loader readonly='yes' type='pflash'>/etc/shadow</loader>"), /firmware/],
    ['an nvram file over /etc/passwd', base.replace('<boot dev=\'hd\'/>', "<nvram>/etc/passwd</nvram>"), /nvram/],
    ['an nvram of another VM', base.replace('<boot dev=\'hd\'/>', "<nvram>/var/lib/libvirt/qemu/nvram/other_VARS.fd</nvram>"), /nvram/],
    ['an nvram template from /etc', base.replace('<boot dev=\'hd\'/>', "<nvram template='/etc/shadow'>/tmp/exp/img/exp1_VARS.fd</nvram>"), /firmware/],
    ['fw_cfg entries from host files', base.replace('<vcpu', "<sysinfo type='fwcfg'><entry name='opt/x' file='/etc/shadow'/></sysinfo>\n  <vcpu"), /fwcfg/],
    ['file-backed guest memory', base.replace('<vcpu', "<memoryBacking><source type='file'/></memoryBacking>\n  <vcpu"), /file/],
    ['a seclabel switching confinement off', base.replace('</devices>', "</devices>\n  <seclabel type='none'/>"), /seclabel/],
    ['a host-side bootloader', base.replace('<vcpu', '<bootloader>/tmp/x</bootloader>\n  <vcpu'), /bootloader/],
    ['an ACPI table from the host', base.replace('<boot dev=\'hd\'/>', "<acpi><table type='slic'>/etc/shadow</table></acpi>"), /\/etc\/shadow/],
    ['another VM\'s name', base.replace('<name>exp1</name>', '<name>victim</name>'), /must be named/],
    ['two names', base.replace('<name>exp1</name>', '<name>exp1</name><name>victim</name>'), /must be named/],
    ['a xen domain', base.replace("<domain type='kvm'>", "<domain type='xen'>"), /xen/],
    ['an unknown element', withDevice('<sparkle/>'), /sparkle/],
  ];
  it.each(hostile)('refuses %s with code 58', (_what, xml, why) => {
    expect(refusal(xml)).toMatch(why);
  });

  it('refuses a UUID other than the live definition\'s', () => {
    const live = base;
    expect(refusal(base.replace('b61efb1d-ee53-4959-aef0-ba160f1be74f', '00000000-0000-0000-0000-000000000001'), { liveXml: live })).toMatch(/UUID/);
  });

  it('keeps an element outside the allowlist when the live definition has exactly it', () => {
    const hostdev = "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/></source></hostdev>";
    const live = withDevice(hostdev);
    expect(allowlistedDomainXml(live, { ...ctx, liveXml: live })).toContain("<hostdev mode='subsystem' type='pci' managed='yes'>");
    // … but not a different one, nor the same one somewhere else.
    expect(refusal(withDevice(hostdev.replace('0x1f', '0x1e')), { liveXml: live })).toMatch(/hostdev/);
    expect(refusal(base.replace('</devices>', `</devices>${hostdev}`), { liveXml: live })).toMatch(/hostdev/);
  });

  it('keeps qemu:commandline only as the live definition has it, namespace included', () => {
    const ns = "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>";
    const cmd = "<qemu:commandline><qemu:arg value='-device'/><qemu:arg value='loader,file=/tmp/exp/img/rand.bin,addr=0x1000000,force-raw=on'/></qemu:commandline>";
    const live = base.replace("<domain type='kvm'>", ns).replace('</devices>', `</devices>\n  ${cmd}`);
    expect(allowlistedDomainXml(live, { ...ctx, liveXml: live })).toContain(cmd);
    expect(refusal(live.replace('rand.bin', '/etc/shadow'), { liveXml: live })).toMatch(/qemu:commandline/);
  });

  it('accepts firmware the node offers, nvram of this VM, kernel and serial files in the roots', () => {
    const xml = base
      .replace("<boot dev='hd'/>", "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader><nvram template='/usr/share/OVMF/OVMF_CODE.fd'>/var/lib/libvirt/qemu/nvram/exp1_VARS.fd</nvram><kernel>/tmp/exp/img/vmlinuz</kernel>")
      .replace('</devices>', "<serial type='file'><source path='/tmp/exp/img/exp1.serial'/><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console><channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel><interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/><model type='virtio'/></interface><graphics type='vnc' port='-1' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics><rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\n  </devices>");
    const out = allowlistedDomainXml(xml, ctx);
    expect(out).toContain('/var/lib/libvirt/qemu/nvram/exp1_VARS.fd');
    expect(out).toContain("<source path='/tmp/exp/img/exp1.serial'/>");
  });

  it('writes back exactly the checked tree: entities stay escaped', () => {
    const xml = base.replace('</devices>', '</devices>\n  <description>a &lt;b&gt; &amp; &#233;</description>');
    const out = allowlistedDomainXml(xml, ctx);
    expect(out).toContain('<description>a &lt;b&gt; &amp; é</description>');
  });
});
