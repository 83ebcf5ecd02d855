/**
 * Runs the command blocks of a Markdown runbook (docs/restore-runbook.md).
 *
 * Every ```bash block starts with a marker line
 *   # runbook:<kind> id=<id> …
 * kind: setup (variables and helper functions, pasted once into the
 * operator's shell), inspect (reads), changes (writes), manual (only when the
 * text says so). The first setup block holds the variables an operator
 * edits, above a line `# ---- derived`; a test supplies their values.
 */
import { readFile } from 'node:fs/promises';
import { execa } from 'execa';

export type BlockKind = 'setup' | 'inspect' | 'changes' | 'manual';

export interface RunbookBlock {
  /** position among the bash blocks, 1-based */
  index: number;
  kind: BlockKind;
  id: string;
  /** the block's text, marker line included */
  code: string;
  /** line of the opening fence in the Markdown file, 1-based */
  line: number;
}

const MARKER = /^# runbook:(setup|inspect|changes|manual) id=([a-z0-9-]+)\b/;
const DERIVED = /^# -+ derived/;

/** All ```bash blocks in document order; throws on a block without a valid marker or a duplicate id. */
export function parseRunbook(markdown: string): RunbookBlock[] {
  const lines = markdown.split('\n');
  const blocks: RunbookBlock[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)\s*$/.exec(lines[i] ?? '');
    if (!open) continue;
    const start = i;
    let end = i + 1;
    while (end < lines.length && !/^```\s*$/.test(lines[end] ?? '')) end++;
    if (end >= lines.length) throw new Error(`runbook: fence opened at line ${start + 1} is never closed`);
    i = end;
    if (open[1] !== 'bash') continue;
    const code = lines.slice(start + 1, end).join('\n');
    const m = MARKER.exec(code.split('\n')[0] ?? '');
    if (!m) throw new Error(`runbook: the bash block at line ${start + 1} does not start with "# runbook:<setup|inspect|changes|manual> id=<id>"`);
    const id = m[2] as string;
    if (blocks.some((b) => b.id === id)) throw new Error(`runbook: duplicate block id ${id} (line ${start + 1})`);
    blocks.push({ index: blocks.length + 1, kind: m[1] as BlockKind, id, code, line: start + 1 });
  }
  return blocks;
}

export async function readRunbook(file: string): Promise<RunbookBlock[]> {
  return parseRunbook(await readFile(file, 'utf8'));
}

export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** Names assigned above the "derived" line of the variables block. */
export function editableVariables(block: RunbookBlock): string[] {
  const names: string[] = [];
  for (const line of block.code.split('\n')) {
    if (DERIVED.test(line)) break;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=/.exec(line);
    if (m?.[1]) names.push(m[1]);
  }
  return names;
}

/**
 * The variables block with every editable assignment replaced by the given
 * value. Every editable variable must get a value, and every value must
 * belong to an editable variable: the runbook and its test cannot drift.
 */
export function fillVariables(block: RunbookBlock, values: Record<string, string>): string {
  const editable = editableVariables(block);
  const missing = editable.filter((n) => !(n in values));
  const unknown = Object.keys(values).filter((n) => !editable.includes(n));
  if (missing.length > 0 || unknown.length > 0) {
    throw new Error(`runbook variables: no value for [${missing.join(', ')}]; not in the runbook: [${unknown.join(', ')}]`);
  }
  let derived = false;
  return block.code
    .split('\n')
    .map((line) => {
      if (DERIVED.test(line)) derived = true;
      const m = /^([A-Za-z_][A-Za-z0-9_]*)=/.exec(line);
      return !derived && m?.[1] ? `${m[1]}=${shellQuote(values[m[1]] as string)}` : line;
    })
    .join('\n');
}

/** What an operator has in the shell after pasting the setup blocks: filled variables, then the other setup blocks. */
export function buildPrelude(blocks: RunbookBlock[], values: Record<string, string>): string {
  const setup = blocks.filter((b) => b.kind === 'setup');
  const [variables, ...rest] = setup;
  if (!variables || variables.id !== 'variables') throw new Error('runbook: the first setup block must be id=variables');
  return [fillVariables(variables, values), ...rest.map((b) => b.code)].join('\n');
}

export interface BlockRun {
  block: RunbookBlock;
  exitCode: number;
  output: string;
  ms: number;
}

/** One block in its own `bash`, after `set -euo pipefail` and the prelude. */
export async function runBlock(prelude: string, block: RunbookBlock, timeoutMs = 180_000): Promise<BlockRun> {
  const script = `set -euo pipefail\n${prelude}\n${block.code}\n`;
  const t0 = Date.now();
  const r = await execa('bash', ['--noprofile', '--norc', '-c', script], { reject: false, all: true, stdin: 'ignore', timeout: timeoutMs });
  return { block, exitCode: r.exitCode ?? -1, output: r.all ?? '', ms: Date.now() - t0 };
}

export function describeFailure(run: BlockRun): string {
  const { block } = run;
  return [
    `runbook block #${block.index} id=${block.id} (${block.kind}, docs line ${block.line}) exited ${run.exitCode}`,
    '--- block ---',
    block.code,
    '--- output ---',
    run.output,
  ].join('\n');
}
