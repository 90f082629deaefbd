"""Pipeline stages: one module per DVC stage (python -m tasks.<stage>)."""
