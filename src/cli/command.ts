import type { ParseArgsConfig } from 'node:util';
import type { Io } from './runtime.js';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface ParsedArgs {
  positionals: string[];
  values: Record<string, string | boolean | string[] | undefined>;
  config: string | undefined;
  io: Io;
}

/** One CLI command: its help text, its options, and what it runs. */
export interface Command {
  name: string;
  summary: string;
  usage: string;
  help: string;
  options: OptionSpec;
  run(args: ParsedArgs): Promise<number>;
  /** Reports bad options or arguments its own way and returns the exit code (default: the message and usage on stderr, exit 2). */
  usageError?(message: string, io: Io): number;
}

export function listOption(v: unknown): string[] {
  if (typeof v !== 'string') return [];
  return v.split(',').map((s) => s.trim()).filter(Boolean);
}
