"""Training: the recipes (load, derive, validate, generate), the stage chains that run them through the one
axolotl runner, the state of a stage on disk, the GPU preflight and the memory plan of `--dry-run`."""
