"""Training and evaluation on history: series, passes, tuning, injected events."""
