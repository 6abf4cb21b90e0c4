"""Science: how neurons are ranked, the controls, the two-stage criterion and the threshold search."""
