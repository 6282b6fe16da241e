"""One module per `model.type`, named as the type: its params, builder and memory estimate (registry.py)."""
