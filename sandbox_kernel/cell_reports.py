"""The supervisor's record of a kernel's recent magic-cell reports, for the server extension.

The cell service adds each finished ``%%sh``/``%%node``/``%%sandbox`` cell's trusted report under
the msg_id of the execute request that ran it (the kernel names it in its cell request). A
kernel can only mislabel its *own* cells: every kernel has its own record. Bounded: the last
``limit`` cells; ids outside a small character set are not recorded.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

MSG_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
DEFAULT_LIMIT = 256


class CellReports:
    def __init__(self, limit: int = DEFAULT_LIMIT):
        self.limit = limit
        self._reports: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()  # written by cell threads, read by the server's loop

    def record(self, msg_id, report: dict) -> bool:
        """Keep ``report`` under ``msg_id`` (the latest wins); False if the id is unusable."""
        if not isinstance(msg_id, str) or not MSG_ID.fullmatch(msg_id):
            return False
        with self._lock:
            self._reports.pop(msg_id, None)
            self._reports[msg_id] = report
            while len(self._reports) > self.limit:
                self._reports.popitem(last=False)
        return True

    def get(self, msg_id: str) -> dict | None:
        with self._lock:
            return self._reports.get(msg_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._reports)
