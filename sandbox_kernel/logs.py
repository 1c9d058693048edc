"""The package's log: one logger per module (``logging.getLogger(__name__)``), all below
``sandbox_kernel``, silent unless someone listens.

What is logged: each kernel start (with the mechanism of every layer), each kernel death and
why, each refused or failed sandbox set-up, internal errors of the cell service; per-run and
per-cell lines at DEBUG. Inside Jupyter the provisioner routes these records to the server's
own log (``--log-level`` applies), so an operator reads them next to the server's lines.
"""

from __future__ import annotations

import logging
import threading

PACKAGE = "sandbox_kernel"

_routed: set[int] = set()
_lock = threading.Lock()


class _Forward(logging.Handler):
    def __init__(self, target: logging.Logger):
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= self.target.getEffectiveLevel():
            self.target.handle(record)


def route_to(target) -> None:
    """Send the package's records to ``target`` (a Jupyter application's log) as well, once
    per target and process. A target that is an ancestor of the package logger already gets
    them by propagation."""
    if not isinstance(target, logging.Logger):
        return
    if target is logging.getLogger() or PACKAGE.startswith(target.name + "."):
        return
    with _lock:
        if id(target) in _routed:
            return
        _routed.add(id(target))
        package = logging.getLogger(PACKAGE)
        package.addHandler(_Forward(target))
        # Records below the package's level are never made: follow the target's (e.g. the
        # server's --log-level), unless someone set a lower one for the package.
        level = target.getEffectiveLevel()
        if package.level == logging.NOTSET or package.level > level:
            package.setLevel(level)


def layers_summary(report) -> str:
    """``filesystem=bwrap network=netns-deny ...``: each layer's mechanism, or its state."""
    return " ".join(f"{name}={layer.mechanism if layer.state == 'enforced' else layer.state}"
                    for name, layer in report.layers.items())
