"""Developer tools run from the repository root (training and evaluating the bundled default model, making the
CLIP tokenizer files); nothing the web UI imports at run time."""
