"""Using a finished run: the final model (``final``), table exports, exported model folders
and plots."""
