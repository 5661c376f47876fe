"""elmo_fast: a fast, faithful ELMo."""
