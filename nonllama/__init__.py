"""nonllama: from raw text to a small Llama-style language model."""

__version__ = "0.1.0"
