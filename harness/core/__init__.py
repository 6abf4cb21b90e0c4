"""Core: what every layer above uses and that uses nothing of the harness: errors, metrics, names, choices,
device-map parsing, whole-or-nothing files, progress lines, versions, paths. Importing them loads no torch."""
