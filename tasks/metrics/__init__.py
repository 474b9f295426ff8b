"""Task metrics; every value written to metrics.json is a fraction in [0, 1] or a count."""
