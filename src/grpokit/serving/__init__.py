"""Model servers the pipeline starts for its stages (the LLM judge of rejection sampling)."""
