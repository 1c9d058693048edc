/**
 * The effective-sandbox report (architecture contract 3.2) and the words Lab shows for it.
 */

export interface ILayer {
  state: string; // "enforced" | "degraded" | "not-requested"
  mechanism: string | null;
  [detail: string]: unknown;
}

export interface IOutcome {
  exit_code: number | null;
  signal?: number | null;
  timed_out: boolean;
  output_truncated: boolean;
  killed_reason: string | null;
  [detail: string]: unknown;
}

export interface IReport {
  version: number;
  scope: 'kernel' | 'cell';
  platform: string;
  requested: any;
  enforced: { [layer: string]: boolean };
  layers: { [layer: string]: ILayer };
  downgrades: { layer: string; reason: string }[];
  notes: { layer: string; note: string }[];
  outcome?: IOutcome;
  kernel?: IReport;
  reported_by?: string;
}

/** ok: every layer holds; warn: some layer does not (with a reason); bad: none holds. */
export type Level = 'ok' | 'warn' | 'bad';

export const LAYER_NAMES: { [layer: string]: string } = {
  filesystem: 'fs',
  network: 'net',
  resources: 'res',
  privilege: 'priv',
  env: 'env',
  seccomp: 'seccomp'
};

export function layerNames(report: IReport): string[] {
  return Object.keys(report.layers);
}

export function level(report: IReport): Level {
  const names = layerNames(report);
  const holding = names.filter(name => report.layers[name].state === 'enforced');
  if (report.requested?.enabled === false || holding.length === 0) {
    return 'bad';
  }
  return holding.length === names.length ? 'ok' : 'warn';
}

/** One line per layer that does not hold, saying why. */
export function problems(report: IReport): string[] {
  const out: string[] = [];
  for (const name of layerNames(report)) {
    const layer = report.layers[name];
    if (layer.state === 'enforced') {
      continue;
    }
    const reasons = report.downgrades.filter(d => d.layer === name).map(d => d.reason);
    out.push(
      reasons.length
        ? `${name} ${layer.state}: ${reasons.join('; ')}`
        : `${name} ${layer.state}`
    );
  }
  return out;
}

export function formatBytes(value: unknown): string {
  if (typeof value !== 'number') {
    return value === null || value === undefined ? 'unlimited' : String(value);
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let n = value;
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1 && n % 1024 === 0) {
    n /= 1024;
    unit += 1;
  }
  return `${n} ${units[unit]}`;
}

/** What ended a cell's sandboxed process, in words, and whether it is a failure. */
export function outcomeText(outcome: IOutcome, requested: any): { text: string; failed: boolean } {
  const resources = requested?.resources ?? {};
  if (outcome.killed_reason === 'oom' || outcome.oom_killed) {
    return { text: `killed by the memory cap (${formatBytes(resources.memory_bytes)})`, failed: true };
  }
  if (outcome.timed_out) {
    return { text: `timed out after ${resources.wall_seconds} s`, failed: true };
  }
  if (outcome.output_truncated) {
    return { text: `output truncated at ${formatBytes(resources.max_output_bytes)}`, failed: true };
  }
  if (outcome.killed_reason) {
    return { text: `killed (${outcome.killed_reason})`, failed: true };
  }
  if (outcome.exit_code !== 0) {
    const signal = outcome.signal ? ` (signal ${outcome.signal})` : '';
    return { text: `exited with status ${outcome.exit_code}${signal}`, failed: true };
  }
  return { text: 'exited 0', failed: false };
}

/** The cell's own sandbox in a few words: memory, timeout, network. */
export function cellSandboxText(report: IReport): string {
  const resources = report.requested?.resources ?? {};
  const network = report.requested?.network ?? {};
  const net =
    network.mode === 'allowlist' ? `allow ${(network.allow ?? []).join(', ')}` : network.mode;
  const timeout = resources.wall_seconds ? `${resources.wall_seconds} s` : 'none';
  return `memory ${formatBytes(resources.memory_bytes)} · timeout ${timeout} · network ${net}`;
}
