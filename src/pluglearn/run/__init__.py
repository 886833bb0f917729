"""The run state: one object (:class:`~pluglearn.run.state.RunState`, ``learn.run``) that owns a
run's position and captures and restores every part of it (:mod:`pluglearn.run.parts`); the
random states (:mod:`pluglearn.run.rng`); and how a loader's epoch is reproduced at a resume
(:mod:`pluglearn.run.replay`)."""
