"""Using a trained model: ``learn.predict`` (``predict``) and ``learn.export`` /
``pluglearn.load_learner`` (``export``: the weights and the model's spec, rebuilt without
unpickling; ``export_spec`` records it, ``export_build`` builds it back, ``export_file`` is the
file)."""
