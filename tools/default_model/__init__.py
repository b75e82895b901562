"""The bundled default model's training world, used only by tools/train_default_model.py,
tools/evaluate_default_model.py and their tests: the procedural scenes (`scenes`), the trainer (`training`) and
the quality checker (`checker`)."""
