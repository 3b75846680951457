"""Demo data: small synthetic versions of every source in its native format, and demo evaluation sets."""
