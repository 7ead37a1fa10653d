"""Orchestration: every DVC stage runs as a Prefect flow, the pipeline flow drives `dvc repro`,
and MLflow tracking lives on this side only.

Dependencies point one way: flows -> stages -> reasoning. `reasoning/` never imports Prefect,
MLflow or DVC, and `stages/` only call `reasoning`, so the package and the stage scripts run
without any of the three.

Importing this package sets the environment defaults the Makefile also exports, so
`python -m flows.pipeline` run directly behaves like `make run`: Prefect keeps its database in
the repository (`.prefect/`), and no telemetry is sent by Prefect, MLflow, DVC or the Hub.
They are set before any flow module imports Prefect, which reads its settings on import.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENV_DEFAULTS = {
    "PREFECT_HOME": str(ROOT / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow honours DO_NOT_TRACK only when it reads "true"
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # Prefect's default (20 s) is too short for its temporary server on a busy 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
for _key, _value in ENV_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
