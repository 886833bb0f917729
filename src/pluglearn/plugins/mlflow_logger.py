"""MLflowLogger: a fit as an MLflow run (hyperparameters, per-batch and reported metrics, status).

Needs the optional extra: ``pip install "pluglearn[mlflow]"`` (``mlflow-skinny`` with the
SQLAlchemy store MLflow uses by default; a full ``mlflow`` install works too). Example::

    learn.fit(5, plugins=[MLflowLogger(experiment="mlp", params={"hidden": 50})])
    # then: mlflow ui --backend-store-uri sqlite:///mlflow.db

What is logged, when, and how a resumed fit continues its run: :mod:`pluglearn.plugins.tracking`.
Here: the hyperparameters are MLflow params, the values metrics (steps as there), the stop
reason and an error the tags ``stop_reason`` and ``error``, and the status the run's own:
``FINISHED``, ``FAILED``, or ``KILLED`` for an interrupted fit.

``tracking_uri`` defaults to MLflow's (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``).
The logger uses its own ``MlflowClient``, never MLflow's global active run, so it leaves a run
you started with ``mlflow.start_run()`` alone. Metrics are sent in batches: at each ``report``,
every ``flush_secs`` seconds and at the end of the fit (one write per batch to a SQL store costs
tens of milliseconds).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .tracking import BATCH_KEY, REPORT_KEY, TrackerLogger

if TYPE_CHECKING:
    from ..learner import Learner

#: MLflow's status for each way a fit ends
RUN_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH = 1000, 100  # MLflow's limits for one log_batch
MAX_TAG_LENGTH = 5000  # kept under MLflow's limit on a tag value


def _mlflow() -> Any:
    try:
        import mlflow.entities
        import mlflow.exceptions
        import mlflow.tracking
    except ImportError as error:
        raise ImportError(
            "MLflowLogger needs MLflow: pip install 'pluglearn[mlflow]' (or pip install "
            "mlflow-skinny sqlalchemy alembic)."
        ) from error
    return mlflow


class MLflowLogger(TrackerLogger):
    """Logs each fit as a run of the MLflow experiment ``experiment`` (on the main process).

    ``tracking_uri``: where runs go (MLflow's default when None); ``run_name`` and ``tags``
    (str values) label new runs; ``params``: extra hyperparameters; ``every``: log one training
    batch in ``every``; ``flush_secs``: send buffered metrics at least this often.

    Example::

        learn.fit(3, plugins=[MLflowLogger("sqlite:///runs/mlflow.db", experiment="mlp")])
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "pluglearn",
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        every: int = 1,
        flush_secs: float = 5.0,
    ) -> None:
        super().__init__(params, every)
        self._mlflow = _mlflow()  # fail here, not in the middle of the first fit
        if not isinstance(experiment, str) or not experiment:
            raise ValueError(
                f"MLflowLogger: experiment must be a non-empty str, got {experiment!r}."
            )
        tags = dict(tags or {})
        bad = {k: type(v).__name__ for k, v in tags.items() if not isinstance(v, str)}
        if bad:
            raise TypeError(f"MLflowLogger: tags must map str to str; got {bad}: pass str(value).")
        if (
            isinstance(flush_secs, bool)
            or not isinstance(flush_secs, (int, float))
            or flush_secs < 0
        ):
            raise ValueError(f"MLflowLogger: flush_secs must be a number >= 0, got {flush_secs!r}.")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.tags, self.flush_secs = tags, float(flush_secs)
        self.client: Any = None  # the MlflowClient, made at the first fit
        self._pending: list[Any] = []
        self._flushed_at = 0.0

    def _open(self, learn: Learner, run_id: str | None) -> str:
        if self.client is None:
            self.client = self._mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)
        client = self.client
        self._pending, self._flushed_at = [], time.monotonic()
        if run_id is not None:
            try:
                run = client.get_run(run_id)
            except self._mlflow.exceptions.MlflowException as error:
                raise ValueError(
                    f"MLflowLogger: the checkpoint's run {run_id!r} is not in the tracking store "
                    f"{client.tracking_uri!r}: resume with the tracking_uri the run was logged "
                    "to, or start a new run (fit without resume_from)."
                ) from error
            for tag in ("stop_reason", "error"):  # the interrupted attempt's end, not the run's
                if tag in run.data.tags:
                    client.delete_tag(run_id, tag)
            client.update_run(run_id, status="RUNNING")
            return run_id
        found = client.get_experiment_by_name(self.experiment)
        if found is not None and found.lifecycle_stage != "active":
            raise ValueError(
                f"MLflowLogger: experiment {self.experiment!r} is deleted in "
                f"{client.tracking_uri!r}: restore it (mlflow experiments restore) or log to "
                "another experiment name."
            )
        experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
        run = client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        run_id_made: str = run.info.run_id
        return run_id_made

    def _log_params(self, params: dict[str, Any]) -> None:
        Param = self._mlflow.entities.Param
        items = [Param(k, str(v)) for k, v in params.items()]
        for at in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[at : at + MAX_PARAMS_PER_BATCH])

    def _log(self, values: dict[str, float], step: int) -> None:
        Metric, now = self._mlflow.entities.Metric, int(time.time() * 1000)
        self._pending += [Metric(k, v, now, step) for k, v in values.items()]
        if time.monotonic() - self._flushed_at >= self.flush_secs:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._flushed_at = time.monotonic()
        for at in range(0, len(pending), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[at : at + MAX_METRICS_PER_BATCH])

    def _logged_steps(self) -> dict[str, int]:
        steps = {}
        for kind, key in (("batch", BATCH_KEY), ("report", REPORT_KEY)):
            history = self.client.get_metric_history(self.run_id, key)
            if history:
                steps[kind] = max(m.step for m in history)
        return steps

    def _close(self, status: str, stop_reason: str | None, error: str) -> None:
        try:
            self._flush()
            tags = {"stop_reason": stop_reason, "error": error}
            RunTag = self._mlflow.entities.RunTag
            kept = [RunTag(k, v[:MAX_TAG_LENGTH]) for k, v in tags.items() if v]
            if kept:
                self.client.log_batch(self.run_id, tags=kept)
        finally:
            self.client.set_terminated(self.run_id, RUN_STATUS[status])
