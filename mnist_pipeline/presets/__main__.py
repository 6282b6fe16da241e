"""`python -m mnist_pipeline.presets [NAME]`."""

from mnist_pipeline.presets import main

main()
