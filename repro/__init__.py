"""Reproducing the paper's tables: the table spec, the run scheduler, the report."""
