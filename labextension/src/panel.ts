/**
 * The full report as a readable panel: what holds, what does not and why, the outcome of a
 * cell, then the raw JSON in a collapsible. Built with textContent only: report strings are
 * shown, never interpreted as markup.
 */
import { Widget } from '@lumino/widgets';

import { IReport, formatBytes, level, outcomeText, problems } from './report';

const HEADLINE = {
  ok: 'Every layer of the sandbox holds.',
  warn: 'Some layers of the sandbox do not hold.',
  bad: 'Nothing is confined.'
};

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  text?: string,
  className?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (text !== undefined) {
    node.textContent = text;
  }
  if (className) {
    node.className = className;
  }
  return node;
}

function short(value: unknown): string {
  if (Array.isArray(value)) {
    const items = value.map(v => (typeof v === 'string' ? v : JSON.stringify(v)));
    return items.length > 8 ? `${items.slice(0, 8).join(', ')} … (+${items.length - 8})` : items.join(', ') || 'none';
  }
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function layerDetails(name: string, layer: { [key: string]: unknown }): string[] {
  if (name === 'resources' && layer.controls) {
    return Object.entries(layer.controls as { [control: string]: any }).map(([control, c]) => {
      const limit = /bytes/.test(control) ? formatBytes(c.limit) : String(c.limit ?? 'unlimited');
      return `${control} ${limit}: ${c.mechanism ?? 'not enforced'}${c.state && c.state !== 'enforced' ? ` (${c.state})` : ''}`;
    });
  }
  return Object.entries(layer)
    .filter(([key]) => key !== 'state' && key !== 'mechanism')
    .map(([key, value]) => `${key}: ${short(value)}`);
}

function table(headers: string[], rows: (string | HTMLElement)[][]): HTMLTableElement {
  const node = el('table');
  const head = node.createTHead().insertRow();
  for (const h of headers) {
    head.appendChild(el('th', h));
  }
  const body = node.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const cell of row) {
      const td = tr.insertCell();
      if (typeof cell === 'string') {
        td.textContent = cell;
      } else {
        td.appendChild(cell);
      }
    }
  }
  return node;
}

function renderReport(report: IReport, title: string): HTMLElement {
  const root = el('div');
  const lvl = level(report);
  root.appendChild(el('h2', title));
  const headline = el('p', HEADLINE[lvl], `jp-sandbox-headline jp-sandbox-${lvl}`);
  root.appendChild(headline);
  for (const line of problems(report)) {
    root.appendChild(el('p', line, 'jp-sandbox-problem'));
  }
  if (report.outcome) {
    const { text, failed } = outcomeText(report.outcome, report.requested);
    root.appendChild(el('p', `Outcome: ${text}`, `jp-sandbox-outcome${failed ? ' jp-sandbox-failed' : ''}`));
  }
  root.appendChild(el('h3', 'Layers'));
  root.appendChild(
    table(
      ['layer', 'state', 'mechanism', 'details'],
      Object.entries(report.layers).map(([name, layer]) => {
        const details = el('ul');
        for (const line of layerDetails(name, layer)) {
          details.appendChild(el('li', line));
        }
        const state = el('span', layer.state, `jp-sandbox-state-${layer.state}`);
        return [name, state, layer.mechanism ?? '-', details];
      })
    )
  );
  if (report.notes.length) {
    root.appendChild(el('h3', 'Notes'));
    const notes = el('ul');
    for (const n of report.notes) {
      notes.appendChild(el('li', `${n.layer}: ${n.note}`));
    }
    root.appendChild(notes);
  }
  const requested = report.requested ?? {};
  root.appendChild(el('h3', 'Requested policy'));
  root.appendChild(
    table(
      ['setting', 'value'],
      [
        ['on_unavailable', String(requested.on_unavailable)],
        ['filesystem', `${requested.filesystem?.mode} (scratch ${formatBytes(requested.filesystem?.scratch_bytes)})`],
        ['network', `${requested.network?.mode}${requested.network?.allow?.length ? ` ${requested.network.allow.join(', ')}` : ''}`],
        ...Object.entries(requested.resources ?? {}).map(([key, value]) => [
          key,
          /bytes/.test(key) ? formatBytes(value) : String(value ?? 'unlimited')
        ]),
        ['privilege', String(requested.privilege?.mode)]
      ]
    )
  );
  root.appendChild(
    el('p', `Reported by the ${report.reported_by ?? 'provisioner'} (the trusted server side, not the kernel).`, 'jp-sandbox-source')
  );
  const raw = el('details');
  raw.appendChild(el('summary', 'Raw report (JSON)'));
  raw.appendChild(el('pre', JSON.stringify(report, null, 2)));
  root.appendChild(raw);
  return root;
}

export class ReportPanel extends Widget {
  constructor(report: IReport, title: string) {
    super();
    this.addClass('jp-sandbox-panel');
    this.title.label = title;
    this.title.closable = true;
    this.node.appendChild(renderReport(report, title));
    if (report.kernel) {
      this.node.appendChild(renderReport(report.kernel, 'The kernel it ran beside'));
    }
  }
}
