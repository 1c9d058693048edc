/**
 * The server extension's endpoints (sandbox_kernel.server): the trusted reports, never the
 * copies a kernel sends in its replies.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IReport } from './report';

/** The JSON at /api/sandbox/<parts>, or null when the server has none (404). */
async function getReport(parts: string[]): Promise<IReport | null> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'api', 'sandbox', ...parts.map(encodeURIComponent));
  const response = await ServerConnection.makeRequest(url, {}, settings);
  if (response.status === 404) {
    return null;
  }
  if (!response.ok) {
    throw new ServerConnection.ResponseError(response);
  }
  return (await response.json()) as IReport;
}

export function fetchKernelReport(kernelId: string): Promise<IReport | null> {
  return getReport(['kernels', kernelId]);
}

export function fetchCellReport(kernelId: string, msgId: string): Promise<IReport | null> {
  return getReport(['kernels', kernelId, 'cells', msgId]);
}
