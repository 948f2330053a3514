"""The family-agnostic oracle: configuration, operators, activation names and the trace, the runner (forward,
trace, edits, logits at one position, run_from / resume, chunking under a memory budget), the tokenizer and
its files, and the logit lens."""
