"""reasoning: a from-scratch Qwen3 engine and the methods that turn a base LLM into a reasoning model."""
