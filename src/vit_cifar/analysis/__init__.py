"""Analysis of trained classifiers: evaluation metrics, figures, attention maps and rollout."""
