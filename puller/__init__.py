"""The puller: models from object storage into a local disk cache."""
