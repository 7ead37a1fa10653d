"""The embedded default world: a synthetic math task, a locally trained tokenizer and a tiny base
model that behave like Qwen3 on MATH-500, so every pipeline stage runs offline on a laptop."""
