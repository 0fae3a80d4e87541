"""Memory planning: the analytic model, the traced engine, fit search and recommendation."""
