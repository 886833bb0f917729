"""pluglearn: a small, fixed PyTorch training loop whose every extension is a pluggy plugin."""
