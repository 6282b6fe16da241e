"""Developer tools beside the pipeline: they read or drive the project (dvc.yaml, git, dvc), never run in a stage."""
