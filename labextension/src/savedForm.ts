/**
 * Writes the compact saved form of sandbox_kernel.saved_form (same JSON shape; see the README,
 * "What a saved notebook records"): the kernel report once in notebook metadata.sandbox.kernels,
 * each cell a ref plus its own part.
 */
import { ICellModel } from '@jupyterlab/cells';
import { INotebookModel } from '@jupyterlab/notebook';

import { IReport } from './report';

const REMOVED = '~removed';

type JSONish = any;

function isObject(value: unknown): value is { [key: string]: unknown } {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function sameJSON(a: JSONish, b: JSONish): boolean {
  if (Array.isArray(a) || Array.isArray(b)) {
    return (
      Array.isArray(a) &&
      Array.isArray(b) &&
      a.length === b.length &&
      a.every((item, i) => sameJSON(item, b[i]))
    );
  }
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return (
      keys.length === Object.keys(b).length &&
      keys.every(key => key in b && sameJSON(a[key], b[key]))
    );
  }
  return a === b;
}

/** What turns object `base` into object `target`: saved_form.diff. */
export function diff(base: JSONish, target: JSONish): JSONish {
  const out: JSONish = {};
  for (const [key, value] of Object.entries(target)) {
    if (!(key in base)) {
      out[key] = value;
    } else if (isObject(value) && isObject(base[key])) {
      const sub = diff(base[key], value);
      if (Object.keys(sub).length) {
        out[key] = sub;
      }
    } else if (!sameJSON(value, base[key])) {
      out[key] = value;
    }
  }
  const removed = Object.keys(base)
    .filter(key => !(key in target))
    .sort();
  if (removed.length) {
    out[REMOVED] = removed;
  }
  return out;
}

/** The ref of `report` in `kernels`, adding it under the lowest free kN if new. */
export function kernelRef(kernels: { [ref: string]: IReport }, report: IReport): string {
  for (const [ref, known] of Object.entries(kernels)) {
    if (sameJSON(known, report)) {
      return ref;
    }
  }
  let n = 1;
  while (`k${n}` in kernels) {
    n += 1;
  }
  kernels[`k${n}`] = JSON.parse(JSON.stringify(report));
  return `k${n}`;
}

/** Record an executed cell: its kernel's report (by ref), its status, and for a magic cell
 * what its own trusted report adds to the kernel's. */
export function writeCell(
  notebook: INotebookModel,
  cell: ICellModel,
  kernel: IReport,
  status: string,
  cellReport: IReport | null
): void {
  const meta: JSONish = { ...((notebook.getMetadata('sandbox') as JSONish) ?? {}) };
  const kernels = { ...(meta.kernels ?? {}) };
  const ref = kernelRef(kernels, kernel);
  const entry: JSONish = { kernel: ref, reported_by: 'provisioner', cell_outcome: { status } };
  if (cellReport) {
    entry.cell_report = diff({ ...kernel, kernel }, cellReport);
  }
  cell.setMetadata('sandbox', entry);
  writeNotebook(notebook, { ...meta, form: 'compact', kernels, kernel: ref });
}

/** A cell run on a kernel that is not sandboxed: drop any earlier claim that it was. */
export function clearCell(notebook: INotebookModel, cell: ICellModel): void {
  if (cell.getMetadata('sandbox') === undefined) {
    return;
  }
  cell.deleteMetadata('sandbox');
  const meta: JSONish = { ...((notebook.getMetadata('sandbox') as JSONish) ?? {}) };
  delete meta.kernel;
  writeNotebook(notebook, meta);
}

/** Keep only the kernel reports some cell (or the notebook) still refers to. */
function writeNotebook(notebook: INotebookModel, meta: JSONish): void {
  const used = new Set<string>(meta.kernel ? [meta.kernel] : []);
  for (const cell of notebook.cells) {
    const ref = (cell.getMetadata('sandbox') as JSONish)?.kernel;
    if (typeof ref === 'string') {
      used.add(ref);
    }
  }
  const kernels: JSONish = {};
  for (const [ref, report] of Object.entries(meta.kernels ?? {})) {
    if (used.has(ref)) {
      kernels[ref] = report;
    }
  }
  if (Object.keys(kernels).length) {
    meta.kernels = kernels;
  } else {
    delete meta.kernels;
    delete meta.form;
  }
  if (Object.keys(meta).length) {
    notebook.setMetadata('sandbox', meta);
  } else {
    notebook.deleteMetadata('sandbox');
  }
}
