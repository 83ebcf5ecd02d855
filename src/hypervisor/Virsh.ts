import type { Logger } from 'pino';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { CommandError, run } from './exec.js';
import { parseDomState, type DomainRunState } from './domainXml.js';
import { parseDomainCapabilities, type DomainCapabilities } from './domainCapabilities.js';

/**
 * libvirt through virsh. Only libvirt's own APIs are used (save, restore,
 * blockpull…), never raw monitor commands for block jobs: libvirt would not
 * track them (see reference/libvirt-and-qemu.md).
 */
export class Virsh {
  constructor(
    readonly uri: string = 'qemu:///system',
    private readonly logger?: Logger,
    private readonly timeoutMs: number = 30 * 60 * 1000,
  ) {}

  private async virsh(args: string[], timeoutMs?: number): Promise<string> {
    try {
      const r = await run('virsh', ['-q', '-c', this.uri, ...args], { timeoutMs: timeoutMs ?? this.timeoutMs, logger: this.logger });
      return r.stdout;
    } catch (err) {
      if (err instanceof CommandError && /failed to get domain|Domain not found|no domain with matching name/i.test(err.stderr)) {
        throw new BackupError(`libvirt does not know the VM: ${err.stderr.trim()}`, ReturnCode.cannotFindMachine, { cause: err });
      }
      throw err;
    }
  }

  async domainExists(vm: string): Promise<boolean> {
    try {
      await this.virsh(['domuuid', vm], 30_000);
      return true;
    } catch (err) {
      if (err instanceof BackupError && err.code === ReturnCode.cannotFindMachine) return false;
      throw err;
    }
  }

  async domState(vm: string): Promise<DomainRunState> {
    return parseDomState(await this.virsh(['domstate', vm], 30_000));
  }

  async isPersistent(vm: string): Promise<boolean> {
    const out = await this.virsh(['dominfo', vm], 30_000);
    return /^Persistent:\s+yes/m.test(out);
  }

  async dumpXml(vm: string, opts: { inactive?: boolean } = {}): Promise<string> {
    return this.virsh(['dumpxml', ...(opts.inactive ? ['--inactive'] : []), vm], 60_000);
  }

  /** Stops the VM and writes its memory and CPU state to `file`. */
  async save(vm: string, file: string): Promise<void> {
    await this.virsh(['save', vm, file]);
  }

  /** The domain XML embedded in a state file. */
  async saveImageXml(file: string): Promise<string> {
    return this.virsh(['save-image-dumpxml', file], 60_000);
  }

  async restore(file: string, xmlFile?: string): Promise<void> {
    await this.virsh(['restore', file, ...(xmlFile ? ['--xml', xmlFile] : [])]);
  }

  async start(vm: string, opts: { paused?: boolean } = {}): Promise<void> {
    await this.virsh(['start', vm, ...(opts.paused ? ['--paused'] : [])], 120_000);
  }

  async resume(vm: string): Promise<void> {
    await this.virsh(['resume', vm], 60_000);
  }

  /** Ask the guest to shut down (ACPI); see stopGracefully for the wait. */
  async shutdown(vm: string): Promise<void> {
    await this.virsh(['shutdown', vm], 60_000);
  }

  /** Shut down, wait up to `timeoutMs` for the guest, then force it off. */
  async stopGracefully(vm: string, timeoutMs: number): Promise<'shutdown' | 'destroyed' | 'was off'> {
    if ((await this.domState(vm)) === 'shut off') return 'was off';
    await this.shutdown(vm).catch(() => undefined);
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if ((await this.domState(vm)) === 'shut off') return 'shutdown';
      await new Promise((r) => setTimeout(r, 250));
    }
    if ((await this.domState(vm)) !== 'shut off') await this.destroy(vm);
    return 'destroyed';
  }

  /** `virsh domstate --reason`: e.g. "running (restored)" vs "running (booted)". */
  async domStateReason(vm: string): Promise<string> {
    return (await this.virsh(['domstate', '--reason', vm], 30_000)).trim();
  }

  async destroy(vm: string): Promise<void> {
    await this.virsh(['destroy', vm], 120_000);
  }

  async define(xmlFile: string): Promise<void> {
    await this.virsh(['define', xmlFile], 60_000);
  }

  async undefine(vm: string): Promise<void> {
    await this.virsh(['undefine', vm], 60_000);
  }

  /**
   * Pull the backing data into the live top image with libvirt's block job
   * API and wait for it. bandwidth in MiB/s, 0 = unlimited; with `base`, only
   * the images above it are pulled (a template below stays shared).
   */
  async blockPull(vm: string, target: string, bandwidthMiB: number, base?: string): Promise<void> {
    const args = ['blockpull', vm, target, '--wait'];
    if (base !== undefined) args.push('--base', base);
    if (bandwidthMiB > 0) args.push('--bandwidth', String(bandwidthMiB));
    await this.virsh(args);
  }

  /** The node's emulator and firmware for a virt type (kvm, qemu) and arch: what a restored definition is pinned to. */
  async domainCapabilities(virtType: string, arch: string): Promise<DomainCapabilities> {
    return parseDomainCapabilities(await this.virsh(['domcapabilities', '--virttype', virtType, '--arch', arch], 60_000));
  }

  /** `virsh qemu-monitor-command --hmp`: used only by tests to act as the guest. */
  async hmp(vm: string, command: string): Promise<string> {
    return this.virsh(['qemu-monitor-command', vm, '--hmp', command], 60_000);
  }
}
