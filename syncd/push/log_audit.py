"""The audit trail of `syncd receive`, which has no store: one JSON line per answer on the
`syncd.audit` logger, whatever `log.format` is, so a log shipper can parse it as it is.

The receiver samples rejections before they get here (RejectionSampler), as it does for
the store's trail, so one client cannot flood the log.
"""

from __future__ import annotations

import json
import logging
from typing import Final

from syncd.push.audit import AuditRow
from syncd.timefmt import format_epoch

log = logging.getLogger("syncd.audit")

_FIELDS: Final = AuditRow._fields


class LogAudit:
    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self.written = 0

    def record(self, row: AuditRow) -> None:
        entry = dict(zip(_FIELDS, row, strict=True))
        entry["at"] = format_epoch(row.at)
        # ensure_ascii: a hostile path or event id cannot put a line break or an escape
        # sequence into the log.
        self._log.info("%s", json.dumps({"audit": entry}, ensure_ascii=True))
        self.written += 1

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
