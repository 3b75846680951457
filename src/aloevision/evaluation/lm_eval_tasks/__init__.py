"""lm-evaluation-harness task folders (YAML + data); a package only so wheels ship them."""
