import { backupSucceeded } from '../../../workflows/backupMachine.js';
import { createInterface } from 'node:readline/promises';
import { findVmAndLeaf } from '../findVmAndLeaf.js';
import { formatConflicts, type ConflictItem } from '../../domain/restore/restoreConflicts.js';
import { abortRestore, runRestore, type RestoreDecisions } from '../../control/runRestore.js';
import { assertSafeName } from '../../domain/names.js';
import { describeReturnCode } from '../../domain/returnCodes.js';
import { locateLayout } from '../../node/backupLocation.js';
import { readManifest } from '../../node/retainStep.js';
import { requireNodeName } from '../config.js';
import { ExitCode, exitCodeHelp } from '../exitCodes.js';
import { CliError, Runtime, type Io } from '../runtime.js';
import { leafChangeLine, progressPrinter } from '../report.js';
import { startLocalNode } from '../localNode.js';
import type { Command } from '../command.js';

type Side = 'backup' | 'live';

function parseSide(what: string, v: string): Side {
  if (v !== 'backup' && v !== 'live') throw new CliError(`${what}: expected backup or live, got ${JSON.stringify(v)}`, ExitCode.usage);
  return v;
}

/** --take ID=backup|live, repeatable. */
function parseTakes(values: unknown): Record<string, Side> {
  const out: Record<string, Side> = {};
  for (const t of Array.isArray(values) ? values : []) {
    const m = /^(.+)=(backup|live)$/.exec(String(t));
    if (!m?.[1] || !m[2]) throw new CliError(`--take ${JSON.stringify(t)}: expected ID=backup or ID=live (IDs are shown with the conflicts)`, ExitCode.usage);
    out[m[1]] = m[2] as Side;
  }
  return out;
}

async function askPerConflict(conflicts: ConflictItem[], io: Io): Promise<RestoreDecisions | 'abort'> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const overrides: Record<string, Side> = {};
    for (const c of conflicts) {
      for (;;) {
        const a = (await rl.question(`${c.label} [${c.id}]: take [b]ackup (${c.backup ?? 'absent'}) or [l]ive (${c.live ?? 'absent'}), or [a]bort? [b] `)).trim().toLowerCase();
        if (a === '' || a === 'b' || a === 'backup') { overrides[c.id] = 'backup'; break; }
        if (a === 'l' || a === 'live') { overrides[c.id] = 'live'; break; }
        if (a === 'a' || a === 'abort') return 'abort';
        io.err('answer b, l or a');
      }
    }
    return { prefer: 'backup', overrides };
  } finally {
    rl.close();
  }
}

export const restoreCommand: Command = {
  name: 'restore',
  summary: 'restore a VM (or a copy of it) from a finished backup, through the directory',
  usage: 'stoney-backup restore VM LEAF [--as NAME] [--prefer backup|live] [--take ID=backup|live]... [--yes] [--dry-run] [--abort] [--local] [--json] [--config FILE]',
  help: `Restores VM to the moment of backup LEAF — memory, CPU and disks — through
the restore protocol on the backup's leaf: unretainSmallFiles (the node copies
XML and LDIF into retain and compares them with the live VM) → you decide the
conflicts → unretainLargeFiles (state file and disks copied and verified
against the manifest and qemu-img check) → restore (VM shut down, undefined,
disks moved over the live paths, the decided directory entries and XML
written, state file restored with that XML) → finished.

Up to the decision the restore can be aborted and leaves no trace; after
that it cannot. Conflicts are shown as a diff; on a terminal you are asked per
conflict. Without a terminal, decide with --prefer (and --take for single
items) or --yes (= prefer the backup); otherwise the restore is aborted.

Options:
  --as NAME           restore a copy as a new VM NAME beside the original (new UUID,
                      new MAC addresses, disks NAME-<image> beside the originals);
                      the original keeps running untouched
  --prefer SIDE       take the backup's or the live value for every conflict
  --take ID=SIDE      per-conflict choice (repeatable); wins over --prefer
  --yes               do not ask; conflicts take the backup's value unless --prefer/--take say otherwise
  --dry-run           show what would happen; change nothing
  --abort             abort the restore of LEAF that waits for decisions, or acknowledge
                      a failed one (restored with a code) so the leaf is finished again
  --local             run the node steps in this process (this host must be the VM's node)
  --json              print the outcome as JSON on stdout

${exitCodeHelp}`,
  options: {
    as: { type: 'string' },
    prefer: { type: 'string' },
    take: { type: 'string', multiple: true },
    yes: { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    abort: { type: 'boolean' },
    local: { type: 'boolean' },
    json: { type: 'boolean' },
    verbose: { type: 'boolean' },
  },
  async run({ positionals, values, config, io }) {
    const [name, leafName, ...rest] = positionals;
    if (!name || !leafName || rest.length) throw new CliError('usage: stoney-backup restore VM LEAF (see stoney-backup list VM)', ExitCode.usage);
    const target = typeof values['as'] === 'string' ? assertSafeName('--as', values['as']) : undefined;
    const prefer = typeof values['prefer'] === 'string' ? parseSide('--prefer', values['prefer']) : undefined;
    const takes = parseTakes(values['take']);
    const rt = await Runtime.create(config, { daemon: false, verbose: values['verbose'] === true, io });
    try {
      const directory = await rt.connect();
      const { vm, leaf } = await findVmAndLeaf(directory, name, leafName);

      if (values['abort'] === true) {
        const after = await abortRestore(directory, leaf, rt.logger);
        io.out(`${name}: restore of ${leafName} aborted; the leaf is ${after.mode} again`);
        return ExitCode.ok;
      }
      if (values['dry-run'] === true) {
        const settings = (await directory.effectiveSettings(vm)).backup;
        const { layout } = await locateLayout(vm, leafName, settings, rt.config.imageRoots);
        const manifest = await readManifest(layout.manifestPath).catch(() => undefined);
        const plan = {
          vm: name, leaf: leafName, leafMode: leaf.mode, restorable: backupSucceeded(leaf),
          target: target ?? name, asNew: target !== undefined, backupDir: layout.backupDir,
          files: manifest?.files.map((f) => ({ name: f.name, size: f.size })) ?? '(manifest not readable on this host)',
          steps: ['unretainSmallFiles', 'decide conflicts', 'unretainLargeFiles', 'restore', 'finished'],
          liveVm: target ? 'untouched' : 'shut down, undefined, disks replaced, redefined and restored',
        };
        if (values['json'] === true) io.out(JSON.stringify(plan, null, 2));
        else {
          io.out(`restore ${name} from ${leafName} (dry run: nothing is changed)`);
          for (const [k, v] of Object.entries(plan)) io.out(`  ${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`);
        }
        return plan.restorable ? ExitCode.ok : ExitCode.backupFailed;
      }
      if (values['local'] === true) {
        const nodeName = requireNodeName(rt.config);
        if (vm.node !== nodeName) throw new CliError(`--local: ${name} runs on ${vm.node}, not on ${nodeName}`, ExitCode.usage);
        await startLocalNode(rt, directory, nodeName, progressPrinter(io));
      }
      const interactive = process.stdin.isTTY === true && values['yes'] !== true && prefer === undefined;
      // SIGINT/SIGTERM end the waits (the abort signal); with --local the cleanup lets a running step finish.
      void rt.untilSignal();
      const result = await runRestore({
        directory, vm, leaf, ...(target ? { target } : {}), policy: rt.config.policy, logger: rt.logger, signal: rt.abort.signal,
        onLeafChange: (l) => io.err(leafChangeLine(l)),
        decide: async (raw) => {
          const conflicts = raw as ConflictItem[];
          if (conflicts.length === 0) return { prefer: 'backup', overrides: {} };
          io.err(`\n${conflicts.length} difference(s) between the backup and the live ${name}:\n${formatConflicts(conflicts)}`);
          for (const id of Object.keys(takes)) {
            if (!conflicts.some((c) => c.id === id)) {
              io.err(`--take ${id}: no such conflict (IDs: ${conflicts.map((c) => c.id).join(', ')}); aborting`);
              return 'abort';
            }
          }
          if (interactive && Object.keys(takes).length === 0) return askPerConflict(conflicts, io);
          if (prefer === undefined && values['yes'] !== true && Object.keys(takes).length < conflicts.length) {
            io.err('these conflicts need a decision: --prefer backup|live, --take ID=backup|live, or --yes (takes the backup); aborting');
            return 'abort';
          }
          return { prefer: prefer ?? 'backup', overrides: takes };
        },
      });
      if (values['json'] === true) io.out(JSON.stringify(result, null, 2));
      else if (result.outcome === 'restored') io.out(`${target ?? name}: restored from ${leafName}${target ? ` (a copy of ${name})` : ''}`);
      else if (result.outcome === 'aborted') io.out(`${name}: restore of ${leafName} aborted; nothing was changed`);
      else io.out(`${name}: restore of ${leafName} FAILED at ${result.failedAt?.mode} with return value ${result.failedAt?.returnValue} (${describeReturnCode(result.failedAt?.returnValue ?? 1)})${result.leaf.mode === 'finished' ? '; nothing live was touched' : ''}`);
      if (result.outcome === 'aborted' && process.stdin.isTTY !== true && prefer === undefined && values['yes'] !== true && result.conflicts.length > 0) return ExitCode.usage;
      return result.outcome === 'failed' ? ExitCode.backupFailed : ExitCode.ok;
    } finally {
      await rt.close();
    }
  },
};
