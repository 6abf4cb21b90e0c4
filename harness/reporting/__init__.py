"""Reporting: the summary table, JSON/CSV reports with provenance, and plots."""
