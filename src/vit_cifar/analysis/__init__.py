"""Analysis of a trained classifier: metrics, figures and reports."""
