"""A run as a chain of stages (``stages``), its folder and finished heads (``runs``), its
tables (``results``), and suites of runs (``suites``)."""
