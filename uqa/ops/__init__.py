"""Operating plumbing every other package stands on, with no knowledge of QA: atomic writes
(atomic), fault injection for the tests (faults), child processes and signals (procs), git (git), URL
credentials out of logs (redact), JSON files and content hashes (jsonfile, hashing), the Hugging Face
Hub's errors made readable (hub), the temporary Prefect server and quiet defaults (prefect_server,
runtime) and the Prefect automations that alert (alerts)."""
