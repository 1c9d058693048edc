"""jupyter_server extension: the trusted sandbox reports, served where clients can ask for them.

Kernel code can forge anything the kernel sends (``execute_reply`` metadata included); these
reports come from the provisioner and the cell service, in the server process:

- ``GET /api/sandbox/kernels/<id>``: the kernel's effective-sandbox report (404 for a kernel
  this server does not run, or one not started by the sandbox provisioner);
- ``GET /api/sandbox/kernels/<id>/cells/<msg_id>``: the report of a ``%%sh``/``%%node``/
  ``%%sandbox`` cell run by that execute request, if the cell service recorded it;
- a kernel the sandbox refuses reaches ``POST /api/kernels`` as 503 (with every downgrade) or
  400 (a bad policy field), not as jupyter_server's bare 500 "Unhandled error";
- ``GET /api/sandbox/doctor``: the host's readiness under the operator's policy (``doctor
  --json``), authorized as a server-level read (resource ``server``), so deployments with
  granular scopes can keep it to operators.

Every handler authenticates like the server's own APIs; the kernel endpoints are authorized as
reads of the ``kernels`` resource. Enabled by ``jupyter_server_config.d/sandbox_kernel.json``,
installed with the package.
"""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.ioloop import IOLoop

from .cell_reports import MSG_ID
from .policy import PolicyError
from .provisioner import SandboxProvisioner
from .report import SandboxUnavailable

KERNEL_ID_PATTERN = r"(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)"  # as jupyter_server's kernel routes
MSG_ID_PATTERN = rf"(?P<msg_id>{MSG_ID.pattern})"


class _KernelHandler(APIHandler):
    auth_resource = "kernels"

    def sandbox_provisioner(self, kernel_id: str) -> SandboxProvisioner:
        if kernel_id not in self.kernel_manager:
            raise web.HTTPError(404, f"no kernel {kernel_id} on this server")
        provisioner = getattr(self.kernel_manager.get_kernel(kernel_id), "provisioner", None)
        if not isinstance(provisioner, SandboxProvisioner) or provisioner.effective_sandbox is None:
            raise web.HTTPError(404, f"kernel {kernel_id} was not started by the sandbox provisioner")
        return provisioner


class KernelReportHandler(_KernelHandler):
    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        self.finish(json.dumps(self.sandbox_provisioner(kernel_id).effective_sandbox))


class CellReportHandler(_KernelHandler):
    @web.authenticated
    @authorized
    async def get(self, kernel_id: str, msg_id: str) -> None:
        reports = self.sandbox_provisioner(kernel_id).cell_reports
        report = reports.get(msg_id) if reports is not None else None
        if report is None:
            raise web.HTTPError(404, f"no sandboxed cell of kernel {kernel_id} ran as request {msg_id}")
        self.finish(json.dumps({**report, "reported_by": "provisioner"}))


class DoctorHandler(APIHandler):
    auth_resource = "server"

    @web.authenticated
    @authorized
    async def get(self) -> None:
        # The first call probes the host (it spawns bwrap, nft, ...): off the event loop.
        data = await IOLoop.current().run_in_executor(None, _doctor, self.settings["sandbox_kernel_config"])
        self.finish(json.dumps(data))


def _doctor(server_config) -> dict:
    from .capabilities import detect
    from .cli import doctor_data
    from .config import load_jupyter_config, operator_policy

    config = load_jupyter_config()
    config.merge(server_config)  # the server's own config files win, as for its kernels
    try:
        policy = operator_policy(config)
    except PolicyError as e:
        return {"enforceable": False, "policy": "jupyter-config", "problems": [list(p) for p in e.problems]}
    return doctor_data(detect(policy.resources.cgroup_parent), policy, "jupyter-config")


def _jupyter_server_extension_points():
    return [{"module": "sandbox_kernel.server"}]


def _load_jupyter_server_extension(serverapp) -> None:
    web_app = serverapp.web_app
    base = url_path_join(web_app.settings["base_url"], "api", "sandbox")
    web_app.settings["sandbox_kernel_config"] = serverapp.config
    web_app.add_handlers(".*$", [
        (url_path_join(base, "kernels", KERNEL_ID_PATTERN), KernelReportHandler),
        (url_path_join(base, "kernels", KERNEL_ID_PATTERN, "cells", MSG_ID_PATTERN), CellReportHandler),
        (url_path_join(base, "doctor"), DoctorHandler),
    ])
    _explain_refusals(serverapp.kernel_manager)
    serverapp.log.info("sandbox_kernel.server: serving /api/sandbox/")


def _explain_refusals(kernel_manager) -> None:
    """jupyter_server turns any exception but an HTTPError into 500 "Unhandled error", losing
    the reason: say why the sandbox refused the kernel instead."""
    start = kernel_manager.start_kernel

    async def start_kernel(*args, **kwargs):
        try:
            return await start(*args, **kwargs)
        except SandboxUnavailable as e:
            raise web.HTTPError(503, str(e), reason="Sandbox unavailable") from None
        except PolicyError as e:
            raise web.HTTPError(400, str(e), reason="Invalid sandbox policy") from None

    kernel_manager.start_kernel = start_kernel
