"""The project as DVC sees it: stage status, commit and the workspace lock (dvc_ops), the dvc.lock
guard (statefiles), runs with overrides as DVC experiments (experiment), the stage command shell
(stage_cli) and the demo's own workspace (demo)."""
