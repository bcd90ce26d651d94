"""Training data: chat templates and instruction data with the loss on the responses."""
