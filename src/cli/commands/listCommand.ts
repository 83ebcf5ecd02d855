import { backupSucceeded } from '../../../workflows/backupMachine.js';
import { stat } from 'node:fs/promises';
import { locateLayout } from '../../node/backupLocation.js';
import { describeReturnCode } from '../../domain/returnCodes.js';
import { parseLeafName } from '../../domain/leafName.js';
import { readManifest } from '../../node/retainStep.js';
import type { Command } from '../command.js';
import { ExitCode, exitCodeHelp } from '../exitCodes.js';
import { CliError, Runtime } from '../runtime.js';
import { vmWithSettings } from './vmSettings.js';

export const listCommand: Command = {
  name: 'list',
  summary: 'list the backups of a VM with date, state and size',
  usage: 'stoney-backup list VM [--json] [--config FILE]',
  help: `Shows every backup leaf of the VM: planned time, mode, return value,
stored size and kind (full, or incremental and of which earlier backup; from
the manifest, when the backup directory is readable on this host; --json
also says why an image was stored whole) and whether the backup is complete
and restorable (finished, return value 0, manifest present).

${exitCodeHelp}`,
  options: { json: { type: 'boolean' } },
  async run({ positionals, values, config, io }) {
    const [name, ...rest] = positionals;
    if (!name || rest.length) throw new CliError('usage: stoney-backup list VM', ExitCode.usage);
    const rt = await Runtime.create(config, { daemon: false, io });
    try {
      const directory = await rt.connect();
      const { vm, settings } = await vmWithSettings(directory, name);
      const rows = [];
      for (const l of await directory.listLeaves(name)) {
        // A leaf whose path cannot be derived (odd name, disk outside the roots) is listed, not restorable.
        const located = await locateLayout(vm, l.leaf, settings, rt.config.imageRoots).catch(() => undefined);
        const layout = located?.layout;
        const manifest = layout ? await readManifest(layout.manifestPath).catch(() => undefined) : undefined;
        const size = manifest?.files.reduce((a, f) => a + f.size, 0);
        const images = manifest?.files.filter((f) => f.format !== undefined || f.backing !== undefined) ?? [];
        const kind = manifest === undefined ? null : images.some((f) => f.backing) ? 'incremental' : 'full';
        // The original implementation's backups have no manifest: its XML file marks them.
        const original = !manifest && layout !== undefined && (await stat(layout.backupPath(layout.xmlFileName)).then(() => true, () => false));
        rows.push({
          leaf: l.leaf,
          plannedAt: parseLeafName(l.leaf)?.toISO() ?? null,
          mode: l.mode,
          returnValue: l.returnValue ?? null,
          returnText: describeReturnCode(l.returnValue ?? 0),
          sizeBytes: size ?? null,
          /** full, or incremental (some image stored relative to an earlier backup) */
          kind,
          /** why each image stored whole is not incremental */
          fullReasons: images.filter((f) => f.fullReason !== undefined).map((f) => ({ image: f.name, reason: f.fullReason })),
          /** the earlier backups this one needs (direct bases of its incremental images) */
          basedOn: [...new Set(images.flatMap((f) => (f.backing ? [f.backing.leaf] : [])))],
          /** how the changes of its incremental images were found: `bitmap` (read only those) or `comparison` (read the whole disk) */
          changesFoundBy: [...new Set(images.flatMap((f) => (f.backing && f.changesFoundBy ? [f.changesFoundBy] : [])))],
          backupDir: layout?.backupDir ?? null,
          /** found under the VM-pool path an earlier stoney-backup version used */
          vmPoolPath: located?.legacy ?? false,
          restorable: backupSucceeded(l) && (manifest !== undefined || original),
          executionTime: l.executionTime,
        });
      }
      if (values['json'] === true) {
        io.out(JSON.stringify({ vm: name, backups: rows }, null, 2));
      } else if (rows.length === 0) {
        io.out(`${name}: no backups`);
      } else {
        io.out(`${'LEAF'.padEnd(17)} ${'MODE'.padEnd(22)} ${'RV'.padStart(3)} ${'STORED'.padStart(10)} ${'KIND'.padEnd(11)}  RESTORABLE`);
        for (const r of rows) {
          const size = r.sizeBytes === null ? '-' : `${(r.sizeBytes / 1024 / 1024).toFixed(1)}M`;
          const kind = r.kind === 'incremental' ? `incr. of ${r.basedOn.join(',')}` : (r.kind ?? '-');
          io.out(`${r.leaf.padEnd(17)} ${r.mode.padEnd(22)} ${String(r.returnValue ?? '-').padStart(3)} ${size.padStart(10)} ${kind.padEnd(11)}  ${r.restorable ? 'yes' : 'no'}`);
        }
      }
      return ExitCode.ok;
    } finally {
      await rt.close();
    }
  },
};
