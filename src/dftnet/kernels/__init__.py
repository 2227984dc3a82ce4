"""FFT kernels and their hand-derived autograd Functions: one module per structure."""
