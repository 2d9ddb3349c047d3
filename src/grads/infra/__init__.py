"""What every layer leans on: atomic files and folder locks (atomic), launcher ranks and FSDP (distributed), and
model and tokenizer loading (models)."""
