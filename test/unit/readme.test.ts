import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { commands } from '../../src/cli/runCli.js';
import { configKeys } from '../../src/cli/config.js';

/**
 * The README is the user's entry point: it must exist, show the two set-up
 * commands first, and never name a command, option or configuration key the
 * CLI does not know (docs drift fails the build, not the user).
 */
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const readme = () => readFile(path.join(repo, 'README.md'), 'utf8');
const GLOBAL_OPTIONS = new Set(['config', 'help', 'version']);

/** `stoney-backup CMD …` lines inside fenced code blocks, one per line. */
export function cliLinesOf(markdown: string): string[] {
  const lines: string[] = [];
  let inFence = false;
  for (const line of markdown.split('\n')) {
    if (line.trimStart().startsWith('```')) {
      inFence = !inFence;
      continue;
    }
    const m = inFence ? /^\s*stoney-backup\s+(.*)$/.exec(line) : null;
    if (m?.[1] !== undefined) lines.push(m[1].replace(/\s{2,}.*$/, '')); // drop the explanation column
  }
  return lines;
}

/** Every `stoney-backup CMD` written inline in prose (backticks). */
function inlineCommandsOf(markdown: string): string[] {
  return [...markdown.matchAll(/`stoney-backup ([a-z][a-z-]*)/g)].map((m) => m[1] ?? '');
}

describe('README.md', () => {
  it('is not empty and starts with what the project is', async () => {
    const text = await readme();
    expect(text.length).toBeGreaterThan(2000);
    expect(text.startsWith('# stoney-backup\n')).toBe(true);
  });

  it('shows the demo command and the test command before any other section', async () => {
    const text = await readme();
    const firstSection = text.indexOf('\n## ');
    const firstBlock = text.slice(firstSection, text.indexOf('\n## ', firstSection + 1));
    expect(firstBlock).toContain('bash deploy/demo.sh');
    expect(firstBlock).toContain('npm ci && npm test');
  });

  it('.ci/run runs exactly the README test command', async () => {
    const ci = await readFile(path.join(repo, '.ci/run'), 'utf8');
    const steps = ci.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#') && !/^(set|cd) /.test(l));
    // `npm ci && npm test`, with npm's noise flags allowed on npm ci.
    expect(steps.map((l) => l.replace(/ --no-audit| --no-fund/g, ''))).toEqual(['npm ci', 'npm test']);
  });

  it('names only commands and options that stoney-backup --help knows', async () => {
    const text = await readme();
    const known = new Map(commands.map((c) => [c.name, new Set([...Object.keys(c.options), ...GLOBAL_OPTIONS])]));
    const problems: string[] = [];
    const lines = cliLinesOf(text);
    expect(lines.length).toBeGreaterThanOrEqual(commands.length);
    for (const line of lines) {
      const [name, ...rest] = line.split(/\s+/);
      const options = known.get(name ?? '');
      if (!options) {
        problems.push(`unknown command in "${line}"`);
        continue;
      }
      for (const m of rest.join(' ').matchAll(/--([a-z][a-z-]*)/g)) {
        if (!options.has(m[1] ?? '')) problems.push(`${name} has no option --${m[1]} ("${line}")`);
      }
    }
    for (const name of inlineCommandsOf(text)) if (!known.has(name)) problems.push(`unknown command \`stoney-backup ${name}\` in prose`);
    expect(problems).toEqual([]);
  });

  it('lists every command of the CLI', async () => {
    const named = new Set(cliLinesOf(await readme()).map((l) => l.split(/\s+/)[0]));
    expect(commands.map((c) => c.name).filter((c) => !named.has(c))).toEqual([]);
  });

  it('documents exactly the configuration keys the CLI reads', async () => {
    const text = await readme();
    const documented = new Set([...text.matchAll(/^\| `(STONEY_[A-Z0-9_]+)` \|/gm)].map((m) => m[1]));
    expect([...documented].sort()).toEqual(Object.keys(configKeys).sort());
  });

  it('links every file under docs/, and none of them is empty', async () => {
    const text = await readme();
    for (const f of await readdir(path.join(repo, 'docs'))) {
      expect(text, `README links docs/${f}`).toContain(`(docs/${f})`);
      expect((await readFile(path.join(repo, 'docs', f), 'utf8')).trim().length, `docs/${f} is empty`).toBeGreaterThan(0);
    }
  });
});

describe('cliLinesOf', () => {
  it('reads command lines from fenced blocks only and drops the explanation column', () => {
    const md = 'stoney-backup prose --x\n```\nstoney-backup list VM [--json]      backups: date\n```\n';
    expect(cliLinesOf(md)).toEqual(['list VM [--json]']);
  });
});
