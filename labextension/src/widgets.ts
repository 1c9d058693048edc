/**
 * The two places the report shows: the status-bar item for the active notebook's kernel and a
 * badge under each cell executed in this session.
 */
import { Cell } from '@jupyterlab/cells';
import { LabIcon } from '@jupyterlab/ui-components';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import {
  IReport,
  LAYER_NAMES,
  Level,
  cellSandboxText,
  layerNames,
  level,
  outcomeText,
  problems
} from './report';

export const shieldIcon = new LabIcon({
  name: 'sandbox-kernel:shield',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">' +
    '<path class="jp-sandbox-shield" d="M8 1 2 3.4v4.1c0 3.5 2.6 6.6 6 7.5 3.4-.9 6-4 6-7.5V3.4z"/></svg>'
});

const PREFIX: { [level in Level]: string } = {
  ok: 'sandboxed:',
  warn: 'sandbox degraded:',
  bad: 'not sandboxed:'
};

function layerTokens(report: IReport): HTMLElement[] {
  return layerNames(report).map(name => {
    const token = document.createElement('span');
    token.className = `jp-sandbox-layer jp-sandbox-state-${report.layers[name].state}`;
    token.textContent = LAYER_NAMES[name] ?? name;
    return token;
  });
}

function tooltip(report: IReport): string {
  const lines = problems(report);
  return lines.length ? lines.join('\n') : 'every layer of the kernel sandbox holds (click for the report)';
}

/** Status-bar item: shown only while the active notebook's kernel has a trusted report. */
export class SandboxStatus extends Widget {
  private _report: IReport | null = null;
  private _changed = new Signal<this, void>(this);

  constructor(onOpen: (report: IReport) => void) {
    super();
    this.addClass('jp-sandbox-status');
    this.node.addEventListener('click', () => {
      if (this._report) {
        onOpen(this._report);
      }
    });
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get report(): IReport | null {
    return this._report;
  }

  set report(report: IReport | null) {
    this._report = report;
    this.node.textContent = '';
    if (report) {
      const lvl = level(report);
      this.node.dataset.level = lvl;
      this.node.title = tooltip(report);
      this.node.appendChild(shieldIcon.element({ tag: 'span', className: 'jp-sandbox-icon' }));
      const label = document.createElement('span');
      label.textContent = PREFIX[lvl];
      this.node.appendChild(label);
      this.node.append(...layerTokens(report));
    }
    this._changed.emit();
  }
}

export interface IBadge {
  kernel: IReport;
  status: string; // the execute_reply status
  magic: string | null; // "%%sh", "%%node", "%%sandbox" or null
  cellReport: IReport | null; // the trusted cell report of a magic cell, if recorded
}

/** Put (or replace) the badge under a cell's input. */
export function showBadge(cell: Cell, badge: IBadge, onOpen: (report: IReport, title: string) => void): void {
  removeBadge(cell);
  const node = document.createElement('div');
  node.className = 'jp-sandbox-badge';
  const report = badge.cellReport ?? badge.kernel;
  const lvl = badge.magic && !badge.cellReport ? 'warn' : level(report);
  node.dataset.level = lvl;
  node.dataset.scope = badge.cellReport ? 'cell' : 'kernel';
  node.appendChild(shieldIcon.element({ tag: 'span', className: 'jp-sandbox-icon' }));
  if (badge.magic) {
    node.appendChild(span(badge.magic, 'jp-sandbox-badge-magic'));
  }
  if (badge.cellReport?.outcome) {
    // First what happened to the cell (the question a user has), then its sandbox.
    const { text, failed } = outcomeText(badge.cellReport.outcome, badge.cellReport.requested);
    node.appendChild(span(text, `jp-sandbox-badge-outcome${failed ? ' jp-sandbox-failed' : ''}`));
  }
  let text: string;
  if (badge.cellReport) {
    text = `own sandbox, ${lvl === 'ok' ? 'enforced' : 'degraded'}: ${cellSandboxText(badge.cellReport)}`;
  } else if (badge.magic) {
    text = 'no sandbox run recorded by the supervisor (the cell was refused or never started one)';
  } else {
    text = lvl === 'ok' ? "kernel's sandbox, enforced" : `kernel's sandbox, degraded: ${problems(report).join('; ')}`;
  }
  node.appendChild(span(text, 'jp-sandbox-badge-text'));
  node.title = tooltip(report);
  node.addEventListener('click', () =>
    onOpen(report, badge.cellReport ? `Sandbox of this ${badge.magic} cell` : 'Kernel sandbox')
  );
  const input = cell.node.querySelector('.jp-Cell-inputWrapper');
  if (input) {
    input.after(node);
  } else {
    cell.node.appendChild(node);
  }
}

function span(text: string, className: string): HTMLSpanElement {
  const node = document.createElement('span');
  node.className = className;
  node.textContent = text;
  return node;
}

export function removeBadge(cell: Cell): void {
  cell.node.querySelectorAll('.jp-sandbox-badge').forEach(node => node.remove());
}
