/**
 * sandbox-kernel in JupyterLab: the trusted sandbox report of the active kernel in the status
 * bar, a badge under each executed cell (the cell's own sandbox and outcome for %%sh, %%node
 * and %%sandbox cells) and the report written into the notebook (compact saved form).
 *
 * Reports come from the server extension (the provisioner's record), never from what the
 * kernel sends. Badges are drawn only for cells executed in this session: saved metadata is a
 * record that anyone could have edited, not proof. Kernels not started by the sandbox
 * provisioner get nothing.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { Cell } from '@jupyterlab/cells';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';

import { fetchCellReport, fetchKernelReport } from './api';
import { ReportPanel } from './panel';
import { IReport } from './report';
import { clearCell, writeCell } from './savedForm';
import { SandboxStatus, removeBadge, showBadge, shieldIcon } from './widgets';

const MAGIC = /^\s*(%%(?:sh|node|sandbox))\b/;
const MAX_PENDING = 1000; // execute requests awaiting their reply, per notebook

/** Trusted kernel reports by kernel id; forgotten when the kernel restarts (it is re-planned). */
class KernelReports {
  private _reports = new Map<string, Promise<IReport | null>>();

  get(kernelId: string): Promise<IReport | null> {
    let report = this._reports.get(kernelId);
    if (!report) {
      report = fetchKernelReport(kernelId).catch(() => null);
      this._reports.set(kernelId, report);
    }
    return report;
  }

  forget(kernelId: string): void {
    this._reports.delete(kernelId);
  }
}

function openReport(app: JupyterFrontEnd, report: IReport, title: string): void {
  const widget = new MainAreaWidget({ content: new ReportPanel(report, title) });
  widget.title.label = title;
  widget.title.icon = shieldIcon;
  app.shell.add(widget, 'main', { mode: 'split-right' });
}

/** Follow one notebook's kernel: pair each execute request (its cellId) with its reply. */
function watchNotebook(
  panel: NotebookPanel,
  reports: KernelReports,
  onOpen: (report: IReport, title: string) => void
): void {
  const pending = new Map<string, { cellId: string; code: string }>();
  let kernel: Kernel.IKernelConnection | null = null;

  const onMessage = (conn: Kernel.IKernelConnection, args: Kernel.IAnyMessageArgs) => {
    const msg = args.msg as KernelMessage.IMessage;
    if (args.direction === 'send' && msg.header.msg_type === 'execute_request') {
      const cellId = (msg.metadata as any)?.cellId;
      if (typeof cellId === 'string') {
        pending.set(msg.header.msg_id, { cellId, code: (msg.content as any).code ?? '' });
        if (pending.size > MAX_PENDING) {
          pending.delete(pending.keys().next().value as string);
        }
      }
    } else if (args.direction === 'recv' && msg.header.msg_type === 'execute_reply') {
      const msgId = (msg.parent_header as any)?.msg_id;
      const request = pending.get(msgId);
      if (request) {
        pending.delete(msgId);
        void onReply(conn.id, msgId, request, msg as KernelMessage.IExecuteReplyMsg);
      }
    }
  };

  const onReply = async (
    kernelId: string,
    msgId: string,
    request: { cellId: string; code: string },
    reply: KernelMessage.IExecuteReplyMsg
  ) => {
    const report = await reports.get(kernelId);
    const cell = panel.content.widgets.find(c => c.model.id === request.cellId) as Cell | undefined;
    const model = panel.content.model;
    if (!cell || !model || cell.isDisposed) {
      return;
    }
    if (!report) {
      removeBadge(cell);
      clearCell(model, cell.model);
      return;
    }
    const magic = MAGIC.exec(request.code)?.[1] ?? null;
    const claimed = (reply.metadata as any)?.sandbox?.scope === 'cell';
    const cellReport = magic || claimed ? await fetchCellReport(kernelId, msgId).catch(() => null) : null;
    const status = String(reply.content.status);
    writeCell(model, cell.model, report, status, cellReport);
    showBadge(cell, { kernel: report, status, magic: magic ?? (claimed ? '%%cell' : null), cellReport }, onOpen);
  };

  const onStatus = (conn: Kernel.IKernelConnection, status: Kernel.Status) => {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      reports.forget(conn.id);
    }
  };

  const attach = () => {
    kernel?.anyMessage.disconnect(onMessage);
    kernel?.statusChanged.disconnect(onStatus);
    pending.clear();
    kernel = panel.sessionContext.session?.kernel ?? null;
    kernel?.anyMessage.connect(onMessage);
    kernel?.statusChanged.connect(onStatus);
  };
  panel.sessionContext.kernelChanged.connect(attach);
  attach();
  panel.disposed.connect(() => {
    kernel?.anyMessage.disconnect(onMessage);
    kernel?.statusChanged.disconnect(onStatus);
  });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'sandbox-kernel:plugin',
  description: 'Shows the trusted sandbox report of sandbox-kernel kernels and cells.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, statusBar: IStatusBar | null) => {
    const reports = new KernelReports();
    const onOpen = (report: IReport, title: string) => openReport(app, report, title);
    tracker.widgetAdded.connect((_, panel) => watchNotebook(panel, reports, onOpen));

    if (!statusBar) {
      return;
    }
    const status = new SandboxStatus(report => onOpen(report, 'Kernel sandbox'));
    statusBar.registerStatusItem('sandbox-kernel:status', {
      item: status,
      align: 'left',
      rank: 4,
      isActive: () => status.report !== null,
      activeStateChanged: status.changed
    });
    // The active notebook's kernel, re-read when it changes, restarts or becomes ready.
    let generation = 0;
    const refresh = async () => {
      const current = ++generation;
      const kernel = tracker.currentWidget?.sessionContext.session?.kernel;
      const ready = kernel && kernel.status !== 'starting' && kernel.status !== 'restarting';
      const report = ready ? await reports.get(kernel.id) : null;
      if (current === generation) {
        status.report = report;
      }
    };
    let watched: NotebookPanel | null = null;
    tracker.currentChanged.connect((_, panel) => {
      watched?.sessionContext.statusChanged.disconnect(refresh);
      watched?.sessionContext.kernelChanged.disconnect(refresh);
      watched = panel;
      panel?.sessionContext.statusChanged.connect(refresh);
      panel?.sessionContext.kernelChanged.connect(refresh);
      void refresh();
    });
  }
};

export default plugin;
