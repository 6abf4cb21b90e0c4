"""Runner: settings and options, the session, the experiments, curves and their analysis, baselines, domain
assertions, the ranking cache, xdist scheduling and model preparation."""
