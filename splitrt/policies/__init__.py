"""Per-frame decisions: estimators fed by frame traces, policies that pick an action, prefilters."""
