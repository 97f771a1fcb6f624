"""The house-style fine-tuning loop: approved articles to dataset, job, side-by-side eval and the active writer model."""
