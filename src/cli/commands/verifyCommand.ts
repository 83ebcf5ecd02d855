import { locateLayout } from '../../node/backupLocation.js';
import { formatLeafName, isLeafName } from '../../domain/leafName.js';
import { QemuImg } from '../../hypervisor/QemuImg.js';
import { verifyBackups } from '../../node/verifyBackups.js';
import type { Command } from '../command.js';
import { ExitCode, exitCodeHelp } from '../exitCodes.js';
import { CliError, Runtime } from '../runtime.js';
import { vmWithSettings } from './vmSettings.js';

export const verifyCommand: Command = {
  name: 'verify',
  summary: 're-check the backups of a VM against their manifests, chains included',
  usage: 'stoney-backup verify VM [LEAF] [--json] [--config FILE]',
  help: `Reads every file of the VM's backups in this host's backup store (or of the
one LEAF and the earlier backups it builds on) and checks it against the
backup's manifest: size and digest (sha256PerMiB; sha256 in manifests written
before 2026-11-30); disk images also their header and
\`qemu-img check\`; incremental images every member of their chain (present,
intact, backing file exactly the earlier backup's image). Read-only.
Exit 0 only when everything checked is intact, 1 when anything is not.

${exitCodeHelp}`,
  options: { json: { type: 'boolean' } },
  async run({ positionals, values, config, io }) {
    const [name, leaf, ...rest] = positionals;
    if (!name || rest.length || (leaf !== undefined && !isLeafName(leaf))) throw new CliError('usage: stoney-backup verify VM [LEAF]  (LEAF as YYYYMMDDTHHMMSSZ)', ExitCode.usage);
    const rt = await Runtime.create(config, { daemon: false, io });
    try {
      const directory = await rt.connect();
      const { vm, settings } = await vmWithSettings(directory, name);
      const { layout } = await locateLayout(vm, leaf ?? formatLeafName(new Date()), settings, rt.config.imageRoots);
      const reports = await verifyBackups({ settings, layout, qemuImg: new QemuImg(rt.logger) }, leaf);
      if (leaf !== undefined && reports.length === 0) throw new CliError(`no backup ${leaf} of ${name} in ${layout.vmBackupDir}`, ExitCode.notFound);
      const intact = reports.every((r) => r.problems.length === 0);
      if (values['json'] === true) {
        io.out(JSON.stringify({ vm: name, backupDir: layout.vmBackupDir, intact, backups: reports }, null, 2));
      } else {
        if (reports.length === 0) io.out(`${name}: no backups in ${layout.vmBackupDir}`);
        for (const r of reports) {
          const needs = r.needs.length ? ` (needs ${r.needs.join(', ')})` : '';
          io.out(`${r.leaf}  ${r.kind.padEnd(11)} ${(r.storedBytes / 1024 / 1024).toFixed(1).padStart(9)}M  ${r.problems.length === 0 ? 'intact' : 'DAMAGED'}${needs}`);
          for (const p of r.problems) io.out(`    ${p}`);
        }
      }
      return intact ? ExitCode.ok : ExitCode.backupFailed;
    } finally {
      await rt.close();
    }
  },
};
