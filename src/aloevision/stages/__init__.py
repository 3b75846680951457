"""Pipeline stages: each reads the config values and upstream artifacts it needs and writes one artifact."""
