"""Reading a run's data: files and datasets (``readers``), label ids (``labels``), splits and
folds (``folds``), all of it as one ``Dataset`` (``dataset``)."""
