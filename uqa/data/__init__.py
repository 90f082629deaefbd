"""The data before tokenizing: what `data.source` is (a Hub dataset, a local directory, files per
split: source), the UQA row schema and its checks (rows), and the Arrow shards the stages write
(arrow_shards)."""
