"""PyTorch and openai-clip reference implementations shared by the tests and the benchmarks
(dev extra; never imported by the library)."""
