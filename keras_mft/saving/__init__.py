"""Files: mask files, KerasHub presets and the transformers export."""
