"""params.yaml: its schema (schema), the validation that names every wrong key (validation),
overrides of it (overrides) and the file itself, read and written back with its comments (files)."""
