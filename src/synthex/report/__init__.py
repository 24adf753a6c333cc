"""Image -> structured radiology report (issue 14): format, data, model, inference, evaluation."""
