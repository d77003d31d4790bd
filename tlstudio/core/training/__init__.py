"""The gradient-training loop shared by every kind of learning that trains."""
