"""The model registry: versions and stages in a store with GTO tags (store), what a model spec
names (lookup), the promotion gate (gate), each version's lineage (lineage) and model card
(model_card), retention (retention), the Hub push (hub_push), and the git and DVC remotes as its
record (publish)."""
