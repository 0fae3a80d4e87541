"""One module per CLI command; `peftplan.cli` registers them. Heavy imports stay inside functions."""
