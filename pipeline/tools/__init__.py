"""What users run on a written store: summaries, checks, export, preview, splits, the loader."""
