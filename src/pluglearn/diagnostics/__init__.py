"""What users read when something is wrong or they want to look inside: the note on an error
(which plugin, hook, epoch and batch: ``error_notes``), the checks of the loop's inputs, each
naming the fix (``input_checks``), the suggestion for a mistyped ``learn.<name>``
(``attribute_suggestions``) and ``learn.summary()`` (``summary``)."""
