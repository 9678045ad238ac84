"""A literate, runnable book on deep learning and big models, and the PyTorch library it builds"""

__version__ = "0.1.0"
