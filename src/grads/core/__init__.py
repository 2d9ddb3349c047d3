"""The math of GrADS, as pure functions of tensors and tables (no files, no models loaded): the per-example
gradient-norm kernel (gradnorms), the kernel density (kde), the combined signal (signals) and the selection
rules (rules)."""
