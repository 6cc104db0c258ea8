"""What every benchmark JSON records beside its figures: the load it ran under, when, and on what machine."""

from __future__ import annotations

import datetime
import os

from vaelib.model.device import machine_info


def conditions() -> dict:
    """``load_average`` (1, 5, 15 min), ``date`` (UTC) and ``machine`` (``machine_info``), as measured now."""
    return {"load_average": list(os.getloadavg()),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info()}
