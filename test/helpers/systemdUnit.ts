/** systemd unit files as the tests and the sandbox e2e read them. */

/** Each key of [Service] with the values of all its lines, in order (an empty assignment resets, as in systemd). */
export function serviceDirectives(unitText: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const raw of unitText.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = header[1] ?? '';
      continue;
    }
    const eq = line.indexOf('=');
    if (section !== 'Service' || eq < 0) continue;
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    out.set(key, value === '' ? [''] : [...(out.get(key) ?? []).filter((v) => v !== ''), value]);
  }
  return out;
}
