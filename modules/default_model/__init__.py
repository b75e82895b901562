"""The bundled default model: its procedural training world (`scenes`) and the quality checker (`checker`)."""
