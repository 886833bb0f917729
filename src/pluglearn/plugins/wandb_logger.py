"""WandbLogger: a fit as a Weights & Biases run (config, per-batch and reported metrics, status).

Needs the optional extra: ``pip install "pluglearn[wandb]"``. Example::

    learn.fit(5, plugins=[WandbLogger(project="mlp", params={"hidden": 50})])
    # offline (no account, no network): WANDB_MODE=offline, later `wandb sync wandb/offline-run-*`

What is logged, when, and how a resumed fit continues its run: :mod:`pluglearn.plugins.tracking`.
Here: the hyperparameters are the run's config, the values history rows at W&B's ``step`` (the
report of an epoch shares the row of its last batch), and the end goes into the summary
(``status``, ``stop_reason``, ``error``) and the exit code: 0 finished, 1 failed, 255
interrupted (what wandb itself uses for a Ctrl-C).

The logger makes its own run object (``wandb.init(reinit="create_new")``), so a run you started
yourself stays open and untouched. A resumed fit reopens the checkpoint's run with
``wandb.init(id=..., resume="allow")``. To log no step twice it reads the run's earlier
attempts from their transaction logs on this machine (:mod:`pluglearn.plugins.wandb_files`;
an offline run writes one per attempt, which ``wandb sync`` uploads in order); on a machine
without them, online, W&B itself drops rows below the step the run had reached, so a report
at exactly that step (an attempt that died during validation) is dropped too.

A process killed outright (SIGKILL) loses what wandb had not yet written: wandb writes its log
every ``x_transaction_log_flush_interval`` seconds (15 by default), so such a run may miss the
last steps before the kill, those after the checkpoint included; pass
``settings=wandb.Settings(x_transaction_log_flush_interval=...)`` to write more often. A crash
that raises (an error, Ctrl-C) ends the run cleanly with every step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tracking import BATCH_KEY, REPORT_KEY, TrackerLogger
from .wandb_files import exit_code, history, run_logs

if TYPE_CHECKING:
    from ..learner import Learner

#: the exit code each way a fit ends gives the run
EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 255}
MODES = (None, "online", "offline", "disabled")
#: wandb.init arguments the logger sets itself
OWN_INIT_ARGS = {"id", "resume", "resume_from", "fork_from", "reinit", "config"}
#: how long a resume waits for the last attempt's log to get its end record (its writer may
#: still be flushing it) before taking it as the log of a killed process
SETTLE_SECS = 2.0


def _wandb() -> Any:
    try:
        import wandb
    except ImportError as error:
        raise ImportError(
            "WandbLogger needs wandb: pip install 'pluglearn[wandb]' (or pip install wandb)."
        ) from error
    return wandb


class WandbLogger(TrackerLogger):
    """Logs each fit as a run of the W&B project ``project`` (on the main process).

    ``entity``, ``name``, ``tags`` (a list of str), ``dir`` (where the ``wandb`` folder goes)
    and ``mode`` (``"online"``, ``"offline"``, ``"disabled"``; None: ``WANDB_MODE`` or wandb's
    default) are passed to ``wandb.init``; ``params``: extra hyperparameters for the config;
    ``every``: log one training batch in ``every``; any other keyword (``group``, ``job_type``,
    ``notes``, ``settings``, ...) goes to ``wandb.init`` as it is.

    Example::

        learn.fit(3, plugins=[WandbLogger(project="mlp", mode="offline", dir="runs")])
    """

    def __init__(
        self,
        project: str = "pluglearn",
        entity: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        dir: str | Path | None = None,
        mode: str | None = None,
        params: dict[str, Any] | None = None,
        every: int = 1,
        **init_kwargs: Any,
    ) -> None:
        super().__init__(params, every)
        self._wandb = _wandb()  # fail here, not in the middle of the first fit
        taken = sorted(set(init_kwargs) & OWN_INIT_ARGS)
        if taken:
            raise ValueError(
                f"WandbLogger: {taken} are set by the logger (a resume reopens the run by its "
                "id; the config holds the hyperparameters): give params=... for your own values."
            )
        if mode not in MODES:
            raise ValueError(f"WandbLogger: mode must be one of {MODES}, got {mode!r}.")
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise TypeError(f"WandbLogger: tags must be a list of str, got {tags!r}.")
        self.project, self.entity, self.name, self.mode = project, entity, name, mode
        self.tags, self.dir = list(tags), None if dir is None else Path(dir)
        self.init_kwargs = init_kwargs
        self.run: Any = None  # the wandb Run of the fit in progress

    def _open(self, learn: Learner, run_id: str | None) -> str:
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        where = {
            "project": self.project,
            "entity": self.entity,
            "dir": None if self.dir is None else str(self.dir),
            "mode": self.mode,
            "reinit": "create_new",
            **self.init_kwargs,
        }
        if run_id is None:
            self.run = self._wandb.init(name=self.name, tags=self.tags or None, **where)
        else:
            self.run = self._wandb.init(id=run_id, resume="allow", **where)
        return str(self.run.id)

    def _log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params)

    def _log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def _logged_steps(self) -> dict[str, int]:
        sync_dir = getattr(self.run.settings, "sync_dir", None)
        if not sync_dir:  # a disabled run keeps no files
            return {}
        current = Path(sync_dir).resolve()
        earlier = [p for p in run_logs(current.parent, self.run.id) if p.parent != current]
        steps: dict[str, int] = {}
        if earlier:  # the last attempt's writer may still be flushing its log
            deadline = time.monotonic() + SETTLE_SECS
            while exit_code(earlier[-1]) is None and time.monotonic() < deadline:
                time.sleep(0.05)
        for path in earlier:
            for row in history(path):
                for kind, key in (("batch", BATCH_KEY), ("report", REPORT_KEY)):
                    if key in row:
                        steps[kind] = max(steps.get(kind, -1), int(row["_step"]))
        return steps

    def _close(self, status: str, stop_reason: str | None, error: str) -> None:
        run, self.run = self.run, None
        try:  # None overwrites what an interrupted attempt of the run left there
            run.summary.update(
                {"status": status, "stop_reason": stop_reason, "error": error or None}
            )
        finally:
            run.finish(exit_code=EXIT_CODES[status])
