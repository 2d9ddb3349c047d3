"""The stages, one module each, named for what they do; each reads the previous stage's files and writes its own:

    warmup → score → select → report        (composed by grads.pipeline as `grads select`)
    train · evaluate                         (composed with the others by grads.experiment as `grads experiment`)
"""
