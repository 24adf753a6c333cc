"""Text utilities shared by the data pipeline and the generation engine."""
